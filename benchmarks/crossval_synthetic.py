"""The synthetic-cohort result of issue 4: cross-validation on a few hundred subjects.

Generates the cohort in chunks (each chunk's zips are compressed, then deleted, so the disk
never holds more than one chunk of ~100 MB zips), trains with the shipped `cpu-small`
configuration on the complete ground truth of six targets, and prints the network's
out-of-fold metrics beside the ridge baseline's. Everything lands in --out; a rerun resumes
(generation, compression and cross-validation all skip finished work).

    python benchmarks/crossval_synthetic.py --n 500 --folds 5 --out /tmp/cv_synthetic

By default one network learns all six targets. `--module NAME=TARGET,...` (repeatable) splits
them over several networks, as the published method does with its four modules; each module
is cross-validated in its own folder, crossval/NAME, and the table combines them (names
other than the paper's four modules):

    python benchmarks/crossval_synthetic.py --n 500 --folds 5 --out /tmp/cv_two \
        --module composition=AtlasVatVolume,AtlasAsatVolume,AtlasTotalThighMuscleVolume,weight \
        --module liver_height=liverVolume,height
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from synthetic_cohorts import cached_cohort_truth

TARGETS = ["AtlasVatVolume", "AtlasAsatVolume", "liverVolume", "AtlasTotalThighMuscleVolume", "weight", "height"]
MODULE = "synthbench"


def build_cohort(out: Path, n: int, chunk: int, seed: int, workers: int) -> Path:
    truth = cached_cohort_truth(out, n, chunk, seed, workers)
    targets = out / "targets.csv"
    truth[["eid", "instance", *TARGETS]].to_csv(targets, index=False)
    return targets


def parse_modules(specs: list[str]) -> dict[str, list[str]]:
    """`NAME=T1,T2` arguments -> {NAME: [T1, T2]}; every target must be one of TARGETS."""
    if not specs:
        return {MODULE: list(TARGETS)}
    modules: dict[str, list[str]] = {}
    for spec in specs:
        name, _, listed = spec.partition("=")
        targets = [target for target in listed.split(",") if target]
        if not name or not targets:
            raise SystemExit(f"--module {spec!r}: expected NAME=TARGET[,TARGET...]")
        unknown = sorted(set(targets) - set(TARGETS))
        if unknown:
            raise SystemExit(f"--module {spec!r}: {', '.join(unknown)} not among {', '.join(TARGETS)}")
        if name in modules:
            raise SystemExit(f"--module {name!r} is given twice")
        modules[name] = targets
    return modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--config", default="cpu-small", help="a shipped configuration name or a TOML file")
    parser.add_argument("--module", action="append", default=[], metavar="NAME=TARGET,...", help="one network for these targets (repeatable; default: one network for all six)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    modules = parse_modules(args.module)

    from mimir.learn.crossval import run_crossval
    from mimir.report.crossval_report import write_crossval_report
    from mimir.runs.config import TrainConfig

    started = time.perf_counter()
    targets = build_cohort(args.out, args.n, args.chunk, args.seed, args.workers)
    prepared = time.perf_counter()
    base_config = TrainConfig.load(args.config)
    summaries, reports = [], []
    for name, module_targets in modules.items():
        config = base_config.replace(modules={name: module_targets})
        folder = args.out / "crossval" if len(modules) == 1 else args.out / "crossval" / name
        result = run_crossval(config, args.out / "cache", targets, name, folder, folds=args.folds)
        summaries.append(pd.read_csv(result.summary).assign(module=name))
        reports.append(write_crossval_report(result.out))
    finished = time.perf_counter()

    summary = pd.concat(summaries, ignore_index=True)
    columns = ["module", "name", "n", "icc", "r2", "mae", "baseline_icc", "baseline_mae", "auce", "auce_calibrated"]
    table = summary[columns].copy()
    table["mae_ratio"] = table["mae"] / table["baseline_mae"]
    print(table.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    print(f"cohort and compression: {prepared - started:.0f} s; cross-validation: {finished - prepared:.0f} s")
    for report in reports:
        print(f"report: {report}")


if __name__ == "__main__":
    main()
