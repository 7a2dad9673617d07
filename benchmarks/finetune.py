"""Fine-tuning from a module vs training from scratch, on a small synthetic cohort (issue 15, item 4).

1. Synthesises two cohorts with different seeds and a different generator setting (cohort 1 is
   acquired on the reconstruction grid, cohort 2 with the usual off-grid stations).
2. Trains a source module on cohort 1 for SOURCE_TARGETS and builds it (`build_module`).
3. On --train-n training subjects of cohort 2 trains a module for NEW_TARGETS (one target the
   source never saw, liverVolume, one it saw, weight) twice with the same iterations: from
   scratch, and with `init = SOURCE MODULE` (`mimir train --init MODULE`); optionally also with
   frozen parts (--freeze).
4. Scores both on the held-out subjects of cohort 2 (MAE, ICC(2,1), R2), for each --seeds.

    python benchmarks/finetune.py --out /tmp/finetune_bench --seeds 0 1 2

Everything lands in --out; a rerun skips finished cohorts, the source module and finished runs.
`--stage source` stops after cohort 1 and the source module, `--stage cohort2` makes only cohort 2:
the two can run side by side.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
from synthetic_cohorts import chunk_finished, generate_complete_cohort

SOURCE_TARGETS = ["AtlasVatVolume", "AtlasAsatVolume", "weight", "height"]
#: The cohort-2 module's targets unless --new-targets says otherwise.
NEW_TARGETS = ["liverVolume", "weight"]


def build_cohort(folder: Path, n: int, seed: int, on_grid: bool, workers: int) -> tuple[Path, pd.DataFrame]:
    """A cohort compressed into folder/cache; the zips are deleted afterwards. Returns cache, truth."""
    from mimir.imaging.compress import CompressOptions, compress_exams, discover_inputs
    from mimir.synth import CohortConfig

    cache = folder / "cache"
    zips_folder = folder / "zips"
    done = folder / "done.json"
    if not done.is_file():
        if not chunk_finished(zips_folder):
            generate_complete_cohort(CohortConfig(n=n, seed=seed, on_grid=on_grid), zips_folder, workers)
        zips = sorted(zips_folder.glob("*.zip"))
        compress_exams(discover_inputs(zips), CompressOptions(cache=cache), workers=workers)
        for path in zips:
            path.unlink()
        done.write_text(json.dumps({"n": n, "seed": seed, "on_grid": on_grid}) + "\n")
    return cache, pd.read_csv(zips_folder / "truth.csv")


def scores(predictions: pd.DataFrame, truth: pd.DataFrame, targets: list[str]) -> dict[str, float]:
    from mimir.evaluation.metrics import icc_2_1, mae, r2

    merged = predictions.merge(truth, on=["eid", "instance"], suffixes=("", "_true"))
    result: dict[str, float] = {}
    for target in targets:
        predicted, reference = merged[target].to_numpy(), merged[f"{target}_true"].to_numpy()
        result[f"{target}_mae"] = mae(predicted, reference)
        result[f"{target}_icc"] = icc_2_1(predicted, reference)
        result[f"{target}_r2"] = r2(predicted, reference)
    return result


def markdown_table(table: pd.DataFrame, new_targets: list[str]) -> str:
    """One row per variant and seed, then the mean over seeds: the table of docs/finetune.md."""
    metrics = [f"{target}_{metric}" for target in new_targets for metric in ("mae", "icc", "r2")]
    header = "| variant | seed | seconds | " + " | ".join(metrics) + " |"
    lines = [header, "|" + "---|" * (3 + len(metrics))]
    for _, row in table.iterrows():
        lines.append(f"| {row['variant']} | {row['seed']} | {row['seconds']:.0f} | "
                     + " | ".join(f"{row[m]:.3f}" for m in metrics) + " |")
    for variant, group in table.groupby("variant", sort=False):
        lines.append(f"| **{variant}, mean** | {len(group)} seeds | {group['seconds'].mean():.0f} | "
                     + " | ".join(f"**{group[m].mean():.3f}**" for m in metrics) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--source-n", type=int, default=80, help="subjects of cohort 1 (all train the source)")
    parser.add_argument("--target-n", type=int, default=90, help="subjects of cohort 2 (train + held out)")
    parser.add_argument("--train-n", type=int, default=60, help="training subjects of cohort 2")
    parser.add_argument("--source-iterations", type=int, default=400)
    parser.add_argument("--iterations", type=int, default=200, help="iterations of each cohort-2 run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--new-targets", nargs="+", default=NEW_TARGETS,
                        help=f"the cohort-2 module's targets (default {' '.join(NEW_TARGETS)}; the source learnt {' '.join(SOURCE_TARGETS)})")
    parser.add_argument("--freeze", nargs="*", default=[], choices=["none", "stem", "backbone"],
                        help="extra fine-tuning variants (freeze modes) beside the default `none`")
    parser.add_argument("--backbone-lr-factor", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--config", default="cpu-small", help="a shipped configuration name or a TOML file")
    parser.add_argument("--autocast", default="float32", help="the configs' precision is replaced by this")
    parser.add_argument("--only", nargs="+", metavar="VARIANT",
                        help="run only these variants (e.g. scratch, which needs no source module, beside the source's training)")
    parser.add_argument("--stage", choices=["cohort1", "source", "cohort2", "all"], default="all",
                        help="stop after this stage (cohort1 + source and cohort2 can run side by side)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    if args.stage == "cohort2":
        build_cohort(args.out / "cohort2", args.target_n, 2002, False, args.workers)
        print(f"cohort 2 ready after {time.perf_counter() - started:.0f} s")
        return
    from mimir.inference.module_build import build_module
    from mimir.learn.train import train
    from mimir.runs.config import TrainConfig

    # float32: CPUs without native bfloat16 run cpu-small's bfloat16 slower than float32
    base = TrainConfig.load(args.config).replace(autocast=args.autocast)
    source_module = args.out / "source_module"
    needs_source = args.only is None or any(name != "scratch" for name in args.only)
    if needs_source and not (source_module / "module.json").is_file():
        source_cache, source_truth = build_cohort(args.out / "cohort1", args.source_n, 1001, True, args.workers)
        print(f"cohort 1 ready after {time.perf_counter() - started:.0f} s")
        if args.stage == "cohort1":
            return
        source_targets_csv = args.out / "cohort1" / "targets.csv"
        source_truth.to_csv(source_targets_csv, index=False)
        config = base.replace(
            modules={"source": SOURCE_TARGETS}, iterations=args.source_iterations,
            lr_milestones=[int(0.8 * args.source_iterations)], checkpoint_every=args.source_iterations,
        )
        began = time.perf_counter()
        train(config, source_cache, source_targets_csv, "source", args.out / "source_run", resume=True)
        build_module(args.out / "source_run", None, source_module, "source")
        print(f"source module trained in {time.perf_counter() - began:.0f} s")
    if args.stage == "source":
        return
    target_cache, target_truth = build_cohort(args.out / "cohort2", args.target_n, 2002, False, args.workers)

    target_targets_csv = args.out / "cohort2" / "targets.csv"
    target_truth.to_csv(target_targets_csv, index=False)
    keys = target_truth[["eid", "instance"]].sort_values(["eid", "instance"]).reset_index(drop=True)
    train_keys, test_keys = keys.iloc[: args.train_n], keys.iloc[args.train_n :]
    variants = {"scratch": {"init": "scratch"}, "finetune": {"init": str(source_module)}}
    for mode in args.freeze:
        if mode != "none":
            variants[f"finetune, freeze {mode}"] = {"init": str(source_module), "freeze": mode}
    if args.backbone_lr_factor != 1.0:
        variants[f"finetune, backbone lr x{args.backbone_lr_factor:g}"] = {
            "init": str(source_module), "backbone_lr_factor": args.backbone_lr_factor,
        }
    if args.only is not None:
        variants = {name: changes for name, changes in variants.items() if name in args.only}
    for seed in args.seeds:
        for name, changes in variants.items():
            folder = args.out / "runs" / f"{name.replace(', ', '_').replace(' ', '-')}_seed{seed}"
            config = base.replace(
                modules={"new": args.new_targets}, iterations=args.iterations, seed=seed,
                lr_milestones=[int(0.8 * args.iterations)], checkpoint_every=args.iterations, **changes,
            )
            result_file = folder / "benchmark_scores.json"
            if not result_file.is_file():
                began = time.perf_counter()
                result = train(config, target_cache, target_targets_csv, "new", folder,
                               train_ids=train_keys, val_ids=test_keys, resume=True)
                assert result.val_predictions is not None
                row = {"variant": name, "seed": seed, "seconds": round(time.perf_counter() - began, 1),
                       **scores(result.val_predictions, target_truth, args.new_targets)}
                result_file.write_text(json.dumps(row) + "\n")
            print(result_file.read_text().strip())
    # every finished run, also those of another invocation (e.g. --only scratch beside the source)
    rows = [json.loads(path.read_text()) for path in sorted((args.out / "runs").glob("*/benchmark_scores.json"))]
    table = pd.DataFrame(rows).sort_values(["variant", "seed"], kind="stable")
    table.to_csv(args.out / "results.csv", index=False)
    summary = table.drop(columns=["seed"]).groupby("variant", sort=False).agg(["mean", "std"])
    print(f"{len(train_keys)} training and {len(test_keys)} held-out subjects of cohort 2; "
          f"{args.iterations} iterations each; seeds {sorted(set(table['seed']))}")
    print(summary.to_string(float_format=lambda value: f"{value:.3f}"))
    (args.out / "results.md").write_text(markdown_table(table, args.new_targets))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
