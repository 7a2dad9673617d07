"""`mimir demo`: the whole pipeline on a built-in synthetic cohort, end to end."""

from __future__ import annotations

import argparse

from mimir.cli import common_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="generate, compress, cross-validate, train, package, predict and evaluate on synthetic data",
        description=(
            "Run MIMIR end to end on a synthetic cohort: training and held-out subjects as field-20201 "
            "zips, compression, targets from the UK Biobank-style export, cross-validation with "
            "calibration, the final network, a module, prediction of the held-out zips, and an "
            "evaluation against their ground truth with an HTML report. Rerunning into the same "
            "folder resumes."
        ),
    )
    parser.add_argument("--out", required=True, help="folder for everything the demo writes")
    parser.add_argument("--n-train", type=int, default=60, help="training subjects (default 60)")
    parser.add_argument("--n-test", type=int, default=20, help="held-out subjects (default 20)")
    parser.add_argument("--folds", type=int, default=3, help="cross-validation folds (default 3)")
    parser.add_argument("--iterations", type=int, help="training iterations per network (default: demo.toml)")
    parser.add_argument("--seed", type=int, default=2026)
    common_flags.add_workers(parser)
    common_flags.add_device(parser)
    parser.add_argument("--keep-training-zips", action="store_true", help="keep the training zips after compression")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pandas as pd

    from mimir.cli.progress import Stages
    from mimir.demo import DemoConfig, run_demo

    config = DemoConfig(
        n_train=args.n_train, n_test=args.n_test, seed=args.seed, folds=args.folds,
        iterations=args.iterations, workers=args.workers, device=args.device,
        keep_training_zips=args.keep_training_zips,
    )

    units = {"synth": "subject", "compress": "exam", "predict": "exam", "train": "it", "crossval": "it"}
    with Stages("step", quiet=args.quiet, leave=False, units=units) as progress:
        result = run_demo(config, Path(args.out), progress=progress)
    metrics = pd.read_csv(result.metrics)
    columns = [c for c in ("name", "unit", "n", "icc", "r2", "mae", "mape_percent", "auc") if c in metrics.columns]
    print(metrics[columns].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print("time per stage (s): " + ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in result.timings.items()))
    print(f"predictions: {result.predictions}")
    print(f"evaluation report: {result.report}")
    if result.crossval_report is not None:
        print(f"cross-validation report: {result.crossval_report}")
    print(f"module: {result.module}")
    return 0
