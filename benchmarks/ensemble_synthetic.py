"""Single network vs cross-validation ensemble on a held-out synthetic cohort (issue 15).

Generates a training cohort and a separate held-out cohort (other seeds, no shared eid),
cross-validates a small ResNet18 on the training cohort (K folds), packs the K fold networks
into one format-2 module (`build_module_from_crossval(..., ensemble=True)`, what
`mimir module build --from-crossval CV --ensemble` does) and predicts the held-out cohort with
every member alone and with the first 1..K members (`--members`), reporting per target ICC,
MAE, bias, 95 % interval coverage, AUCE and seconds per subject. Everything lands in --out (the
members' held-out predictions too, member_predictions.npz, for analyses after the run); a rerun
resumes (generation, compression and cross-validation skip finished work).

    python benchmarks/ensemble_synthetic.py --out /tmp/ensemble_bench

On a busy machine the folds can train as parallel processes first (`--fold K`, one process
per fold, the first started alone until it has written splits.json); the run without --fold
then finds them finished, merges and compares.

With --members-from seeds the members are instead K networks trained on every training subject
with seeds 0..K-1 (what `mimir module build --run R1 --run R2 ...` packs); `--seed S` trains one
of them and stops, so they too can run as parallel processes. Seed members carry no
cross-validation calibration (factors 1.0): give --n-calibration to recalibrate them.

The held-out cohort is never seen by any fold network, by the calibration factors or by the
flag thresholds: its coverage is an honest out-of-sample figure. With --n-calibration N, a third
cohort (seed 700) recalibrates the ensemble (`recalibrate_module`, what `mimir module calibrate`
does) and the recalibrated ensemble is scored on the held-out cohort as well.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from synthetic_cohorts import cached_cohort_truth

if TYPE_CHECKING:
    from mimir.inference.modules import LoadedModule
    from mimir.runs.config import TrainConfig

TARGETS = ["AtlasVatVolume", "AtlasAsatVolume", "liverVolume", "AtlasTotalThighMuscleVolume", "weight", "height"]
MODULE = "ensbench"


def build_cohort(out: Path, name: str, n: int, chunk: int, seed: int, workers: int) -> pd.DataFrame:
    """A cohort compressed into out/NAME/cache (zips deleted after each chunk); its truth table."""
    truth = cached_cohort_truth(out / name, n, chunk, seed, workers)
    return truth[["eid", "instance", *TARGETS]]


def benchmark_config(iterations: int, input_pool: int, batch_size: int, **changes: float | bool | None):
    """The shipped cpu-small configuration, shortened for a 2-core machine; `changes` replace
    more of its values (those given as None are left as the configuration has them)."""
    from mimir.runs.config import TrainConfig

    return TrainConfig.load("cpu-small").replace(
        iterations=iterations,
        batch_size=batch_size,
        lr_milestones=[int(iterations * 0.8)],
        input_pool=input_pool,
        autocast="float32",
        checkpoint_every=max(1, iterations // 5),  # history.csv shows the progress
    ).replace(**{name: value for name, value in changes.items() if value is not None})


def scores(reference: pd.DataFrame, mean: np.ndarray, sd: np.ndarray) -> pd.DataFrame:
    """Per target: ICC(2,1), MAE, bias (mean of prediction - reference), share of references
    inside mean +- 1.96 sd, AUCE."""
    from mimir.evaluation.calibration import auce
    from mimir.evaluation.metrics import icc_2_1
    from mimir.inference.postprocess import Z95

    rows = []
    for column, name in enumerate(TARGETS):
        truth = reference[name].to_numpy(dtype=np.float64)
        known = np.isfinite(truth) & np.isfinite(mean[:, column])
        y, m, s = truth[known], mean[known, column], sd[known, column]
        rows.append({
            "target": name,
            "n": int(known.sum()),
            "icc": icc_2_1(m, y),
            "mae": float(np.mean(np.abs(y - m))),
            "bias": float(np.mean(m - y)),
            "coverage": float(np.mean(np.abs(y - m) <= Z95 * s)),
            "auce": auce(m, s, y),
        })
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--n-calibration", type=int, default=0, help="subjects of a calibration cohort for the ensemble (0: none)")
    parser.add_argument("--folds", type=int, default=5, help="members: cross-validation folds, or seed networks")
    parser.add_argument(
        "--members-from", choices=["folds", "seeds"], default="folds",
        help="folds: the fold networks of a cross-validation; seeds: networks trained on every training subject",
    )
    parser.add_argument("--seed", type=int, action="append", help="with --members-from seeds: train only this seed (repeatable) and stop")
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--input-pool", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--shift-probability", type=float,
        help="share of training images translated (the configuration's, 1.0 as in the paper: every one)",
    )
    parser.add_argument("--nll-beta", type=float, help="beta of the beta-NLL loss (the configuration's, 0 as in the paper: plain NLL)")
    parser.add_argument("--ema-decay", type=float, help="weight averaging (the configuration's; 0: none, as in the paper)")
    parser.add_argument(
        "--recompute-batch-norm", action=argparse.BooleanOptionalAction,
        help="batch-norm statistics recomputed after training on the unshifted training images (the configuration's)",
    )
    parser.add_argument(
        "--fold", type=int, action="append",
        help="train only this fold (repeatable) and stop: folds can run as parallel processes on one folder "
        "(start one first, so that it writes the splits); a run without --fold merges and compares",
    )
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stop-after", choices=["data", "crossval"], default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    train_truth = build_cohort(args.out, "train", args.n_train, args.chunk, 300, args.workers)
    test_truth = build_cohort(args.out, "test", args.n_test, args.chunk, 900, args.workers)
    test_truth = test_truth[~test_truth["eid"].isin(train_truth["eid"])].reset_index(drop=True)
    train_truth.to_csv(args.out / "train_targets.csv", index=False)
    test_truth.to_csv(args.out / "test_targets.csv", index=False)
    if args.n_calibration:
        calibration_truth = build_cohort(args.out, "calibration", args.n_calibration, args.chunk, 700, args.workers)
        seen = set(train_truth["eid"]) | set(test_truth["eid"])
        calibration_truth[~calibration_truth["eid"].isin(seen)].to_csv(args.out / "calibration_targets.csv", index=False)
    data_seconds = time.perf_counter() - started
    print(f"cohorts: {len(train_truth)} training and {len(test_truth)} held-out subjects ({data_seconds:.0f} s)", flush=True)
    if args.stop_after == "data":
        return

    from mimir.inference.module_build import build_ensemble, build_module_from_crossval

    config = benchmark_config(
        args.iterations, args.input_pool, args.batch_size,
        shift_probability=args.shift_probability, nll_beta=args.nll_beta, ema_decay=args.ema_decay,
        recompute_batch_norm=args.recompute_batch_norm,
    ).replace(modules={MODULE: TARGETS})
    training_started = time.perf_counter()
    module = args.out / "ensemble_module"
    if args.members_from == "seeds":
        runs = train_seed_members(args.out, config, args.seed or range(args.folds))
        print(f"seed members: {time.perf_counter() - training_started:.0f} s", flush=True)
        if args.stop_after == "crossval" or args.seed:
            return
        if not module.exists():
            build_ensemble(runs, None, module)
    else:
        from mimir.learn.crossval import run_crossval

        crossval = args.out / "crossval"
        run_crossval(
            config, args.out / "train" / "cache", args.out / "train_targets.csv", MODULE, crossval,
            folds=args.folds, fold_ids=args.fold, baseline=None,
        )
        print(f"cross-validation: {time.perf_counter() - training_started:.0f} s", flush=True)
        if args.stop_after == "crossval" or args.fold:
            return
        if not module.exists():
            build_module_from_crossval(crossval, module, ensemble=True)
    compare(args.out, module, test_truth)


def train_seed_members(out: Path, config: TrainConfig, seeds: Iterable[int]) -> list[Path]:
    """Networks trained on every training subject, one per seed (run folders out/seeds/seed_S); finished ones are kept."""
    from mimir.learn.train import train
    from mimir.runs.layout import RunFolder

    runs = []
    for seed in seeds:
        run = out / "seeds" / f"seed_{seed}"
        if not RunFolder(run).weights.is_file():
            started = time.perf_counter()
            train(config.replace(seed=seed), out / "train" / "cache", out / "train_targets.csv", MODULE, run,
                  device="cpu", resume=True)
            print(f"seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
        runs.append(run)
    return runs


def exam_rows(result_table: pd.DataFrame, stems: pd.Series) -> pd.DataFrame:
    """A predictions table's rows in the order of the held-out images (`stems`)."""
    return result_table.set_index("exam").loc[stems] if "exam" in result_table.columns else result_table


def table_scores(result_table: pd.DataFrame, stems: pd.Series, reference: pd.DataFrame) -> pd.DataFrame:
    table = exam_rows(result_table, stems)
    mean = np.column_stack([table[name].to_numpy(dtype=np.float64) for name in TARGETS])
    sd = np.column_stack([table[f"{name}_sd"].to_numpy(dtype=np.float64) for name in TARGETS])
    return scores(reference, mean, sd)


def paired_bootstrap(reference: pd.DataFrame, ensemble: pd.DataFrame, member_means: list[np.ndarray],
                     resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Is the ensemble's MAE gap to its best member more than the chance of which subjects were tested?

    Per target: the 95 % interval of (ensemble MAE - best member's MAE) over subjects resampled
    with replacement, and the share of resamples in which the ensemble is no worse than the best
    member picked again in that resample (the test set picks the best member, so it is picked
    inside each resample too).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for column, name in enumerate(TARGETS):
        truth = reference[name].to_numpy(dtype=np.float64)
        ensemble_error = np.abs(ensemble[name].to_numpy(dtype=np.float64) - truth)
        member_errors = np.stack([np.abs(mean[:, column] - truth) for mean in member_means])
        known = np.isfinite(truth)
        ensemble_error, member_errors = ensemble_error[known], member_errors[:, known]
        best = int(np.argmin(member_errors.mean(axis=1)))
        draws = rng.integers(0, len(ensemble_error), size=(resamples, len(ensemble_error)))
        resampled_ensemble = ensemble_error[draws].mean(axis=1)
        gap_to_best = resampled_ensemble - member_errors[best][draws].mean(axis=1)
        gap_to_reselected = resampled_ensemble - member_errors[:, draws].mean(axis=2).min(axis=0)
        low, high = np.percentile(gap_to_best, [2.5, 97.5])
        rows.append({"target": name, "gap_to_best_low": low, "gap_to_best_high": high,
                     "share_no_worse": float(np.mean(gap_to_reselected <= 0))})
    return pd.DataFrame(rows).set_index("target")


def cached_cohort(cache: Path, truth: pd.DataFrame) -> tuple[list[Path], pd.DataFrame, pd.DataFrame]:
    """A cohort's cached images, their stems with (eid, instance), and the truth in their order."""
    images = sorted(cache.glob("*.npy"))
    keyed = pd.DataFrame({"stem": [image.stem for image in images]})
    keyed["eid"] = keyed["stem"].str.split("_").str[0].astype(int)
    keyed["instance"] = keyed["stem"].str.split("_").str[2].astype(int)
    return images, keyed, keyed.merge(truth, on=["eid", "instance"], how="left")


def member_picked_on_calibration(out: Path, loaded: LoadedModule, order: list[int], member_rows: pd.DataFrame) -> pd.DataFrame:
    """Per target the member with the lowest MAE on the calibration cohort (a choice made without
    the test set) and that member's MAE on the held-out cohort."""
    images, _, reference = cached_cohort(out / "calibration" / "cache", pd.read_csv(out / "calibration_targets.csv"))
    per_member = loaded.predict_members(np.stack([np.load(image) for image in images]))
    calibration_mae = np.array([scores(reference, mean[:, order], sd[:, order])["mae"].to_numpy() for mean, sd in per_member])
    picked = calibration_mae.argmin(axis=0)
    test_mae = member_rows.pivot(index="target", columns="model", values="mae")
    return pd.DataFrame({
        "member_picked_on_calibration": picked,
        "picked_member_mae": [test_mae.loc[name, f"member {number} alone"] for name, number in zip(TARGETS, picked, strict=True)],
    }, index=pd.Index(TARGETS, name="target"))


def compare(out: Path, module: Path, test_truth: pd.DataFrame) -> None:
    """The ensemble module against each of its members, and the first k members, on the held-out cohort."""
    from mimir.inference.modules import load_module
    from mimir.inference.predict import PredictOptions, run_prediction
    from mimir.inference.recalibration import recalibrate_module

    recalibrated = out / "ensemble_module_recalibrated"
    if (out / "calibration_targets.csv").is_file() and not recalibrated.exists():
        outcome = recalibrate_module(
            module, [out / "calibration" / "cache"], out / "calibration_targets.csv", recalibrated,
            options=PredictOptions(device="cpu", precision="float32", workers=1),
        )
        (out / "recalibration.json").write_text(json.dumps([vars(target) for target in outcome.targets], indent=1))
    cache = out / "test" / "cache"
    images, keyed, reference = cached_cohort(cache, test_truth)

    rows = []
    loaded = load_module(module)
    order = [loaded.spec.target_names.index(name) for name in TARGETS]
    per_member = loaded.predict_members(np.stack([np.load(image) for image in images]))
    np.savez(out / "member_predictions.npz", targets=np.array(TARGETS), stems=keyed["stem"].to_numpy(dtype=str),
             reference=reference[TARGETS].to_numpy(dtype=np.float64),
             means=np.stack([mean[:, order] for mean, _ in per_member]), sds=np.stack([sd[:, order] for _, sd in per_member]))
    for number, (mean, sd) in enumerate(per_member):
        rows.append(scores(reference, mean[:, order], sd[:, order]).assign(model=f"member {number} alone"))
    for k in range(1, loaded.spec.n_members + 1):
        options = PredictOptions(device="cpu", precision="float32", members=k, workers=1)
        run_prediction([cache], [module], options)  # warm-up: first-call costs out of the timing
        result = run_prediction([cache], [module], options)
        if k == loaded.spec.n_members:
            ensemble_table = exam_rows(result.table, keyed["stem"])
        per_subject = result.timings["inference"] / len(images)
        rows.append(table_scores(result.table, keyed["stem"], reference).assign(
            model=f"first {k} member(s) (--members {k})", seconds_per_subject=per_subject))
    if recalibrated.exists():
        result = run_prediction([cache], [recalibrated], PredictOptions(device="cpu", precision="float32", workers=1))
        rows.append(table_scores(result.table, keyed["stem"], reference).assign(
            model=f"all {loaded.spec.n_members} members, recalibrated (mimir module calibrate)"))
    results = pd.concat(rows, ignore_index=True)
    results.to_csv(out / "ensemble_results.csv", index=False)
    (out / "ensemble_results.json").write_text(json.dumps({"n_test": len(images)}, indent=1))
    print(results.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    members = results[results["model"].str.endswith("alone")]
    ensemble = results[results["model"] == f"first {loaded.spec.n_members} member(s) (--members {loaded.spec.n_members})"]
    check = ensemble.set_index("target")[["mae", "coverage"]].join(
        members.groupby("target")["mae"].min().rename("best_member_mae")
    )
    check["no_worse"] = check["mae"] <= check["best_member_mae"]
    check = check.join(paired_bootstrap(reference, ensemble_table, [mean[:, order] for mean, _ in per_member]))
    recalibrated_rows = results[results["model"].str.endswith("recalibrated (mimir module calibrate)")]
    if not recalibrated_rows.empty:
        check = check.join(recalibrated_rows.set_index("target")["coverage"].rename("coverage_recalibrated"))
    if (out / "calibration_targets.csv").is_file():
        check = check.join(member_picked_on_calibration(out, loaded, order, members))
    print(check.to_string(float_format=lambda value: f"{value:.4f}"))
    check.to_csv(out / "ensemble_check.csv")


if __name__ == "__main__":
    main()
