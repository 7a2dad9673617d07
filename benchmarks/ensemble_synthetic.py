"""Single network vs cross-validation ensemble on a held-out synthetic cohort (issue 15).

Generates a training cohort and a separate held-out cohort (other seeds, no shared eid),
cross-validates a small ResNet18 on the training cohort (K folds), packs the K fold networks
into one format-2 module (`build_module_from_crossval(..., ensemble=True)`, what
`mimir module build --from-crossval CV --ensemble` does) and predicts the held-out cohort with
every member alone and with the first 1..K members (`--members`), reporting per target ICC,
MAE, 95 % interval coverage, AUCE and seconds per subject. Everything lands in --out; a rerun
resumes (generation, compression and cross-validation skip finished work).

    python benchmarks/ensemble_synthetic.py --out /tmp/ensemble_bench

The held-out cohort is never seen by any fold network, by the calibration factors or by the
flag thresholds: its coverage is an honest out-of-sample figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

TARGETS = ["AtlasVatVolume", "AtlasAsatVolume", "liverVolume", "AtlasTotalThighMuscleVolume", "weight", "height"]
MODULE = "ensbench"


def build_cohort(out: Path, name: str, n: int, chunk: int, seed: int, workers: int) -> pd.DataFrame:
    """A cohort compressed into out/NAME/cache (zips deleted after each chunk); its truth table."""
    from mimir.imaging.compress import CompressOptions, compress_exams, discover_inputs
    from mimir.synth import CohortConfig, generate_cohort

    root = out / name
    cache = root / "cache"
    truths = []
    for index, start in enumerate(range(0, n, chunk)):
        folder = root / f"chunk_{index:03d}"
        if not (folder / "cohort.json").is_file():
            generate_cohort(CohortConfig(n=min(chunk, n - start), seed=seed + index), folder, workers=workers)
            zips = sorted(folder.glob("*.zip"))
            compress_exams(discover_inputs(zips), CompressOptions(cache=cache), workers=workers)
            for path in zips:
                path.unlink()
        truths.append(pd.read_csv(folder / "truth.csv"))
    truth = pd.concat(truths, ignore_index=True).drop_duplicates(["eid", "instance"])
    return truth[["eid", "instance", *TARGETS]]


def benchmark_config(iterations: int, input_pool: int):
    """The shipped cpu-small configuration, shortened for a 2-core machine."""
    from mimir.runs.config import TrainConfig

    return TrainConfig.load("cpu-small").replace(
        iterations=iterations,
        lr_milestones=[int(iterations * 0.8)],
        input_pool=input_pool,
        autocast="float32",
        checkpoint_every=iterations,
    )


def scores(reference: pd.DataFrame, mean: np.ndarray, sd: np.ndarray) -> pd.DataFrame:
    """Per target: ICC(2,1), MAE, share of references inside mean +- 1.96 sd, AUCE."""
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
            "coverage": float(np.mean(np.abs(y - m) <= Z95 * s)),
            "auce": auce(m, s, y),
        })
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--input-pool", type=int, default=4)
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
    data_seconds = time.perf_counter() - started
    print(f"cohorts: {len(train_truth)} training and {len(test_truth)} held-out subjects ({data_seconds:.0f} s)", flush=True)
    if args.stop_after == "data":
        return

    from mimir.learn.crossval import run_crossval

    crossval = args.out / "crossval"
    config = benchmark_config(args.iterations, args.input_pool).replace(modules={MODULE: TARGETS})
    cv_started = time.perf_counter()
    run_crossval(config, args.out / "train" / "cache", args.out / "train_targets.csv", MODULE, crossval, folds=args.folds, baseline=None)
    print(f"cross-validation: {time.perf_counter() - cv_started:.0f} s", flush=True)
    if args.stop_after == "crossval":
        return
    compare(args.out, crossval, test_truth, args.folds)


def compare(out: Path, crossval: Path, test_truth: pd.DataFrame, folds: int) -> None:
    """The ensemble module against each of its members, and the first k members, on the held-out cohort."""
    from mimir.inference.modules import build_module_from_crossval, load_module
    from mimir.inference.predict import PredictOptions, run_prediction

    module = out / "ensemble_module"
    if not module.exists():
        build_module_from_crossval(crossval, module, ensemble=True)
    cache = out / "test" / "cache"
    images = sorted(cache.glob("*.npy"))
    keyed = pd.DataFrame({"stem": [image.stem for image in images]})
    keyed["eid"] = keyed["stem"].str.split("_").str[0].astype(int)
    keyed["instance"] = keyed["stem"].str.split("_").str[2].astype(int)
    reference = keyed.merge(test_truth, on=["eid", "instance"], how="left")

    rows = []
    loaded = load_module(module)
    per_member = loaded.predict_members(np.stack([np.load(image) for image in images]))
    for number, (mean, sd) in enumerate(per_member):
        rows.append(scores(reference, mean, sd).assign(model=f"member {number} alone"))
    for k in sorted({1, folds}):
        options = PredictOptions(device="cpu", precision="float32", members=k, workers=1)
        run_prediction([cache], [module], options)  # warm-up: first-call costs out of the timing
        result = run_prediction([cache], [module], options)
        table = result.table.set_index("exam").loc[keyed["stem"]] if "exam" in result.table.columns else result.table
        mean = np.column_stack([table[name].to_numpy(dtype=np.float64) for name in TARGETS])
        sd = np.column_stack([table[f"{name}_sd"].to_numpy(dtype=np.float64) for name in TARGETS])
        per_subject = result.timings["inference"] / len(images)
        rows.append(scores(reference, mean, sd).assign(model=f"first {k} member(s) (--members {k})", seconds_per_subject=per_subject))
    results = pd.concat(rows, ignore_index=True)
    results.to_csv(out / "ensemble_results.csv", index=False)
    (out / "ensemble_results.json").write_text(json.dumps({"n_test": len(images)}, indent=1))
    print(results.to_string(index=False, float_format=lambda value: f"{value:.3f}"))


if __name__ == "__main__":
    main()
