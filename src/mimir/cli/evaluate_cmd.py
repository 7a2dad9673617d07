"""`mimir evaluate`: predictions against a reference, with the paper's numbers beside ours."""

from __future__ import annotations

import argparse

from mimir.cli import common_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="compare a predictions table with reference values: ICC, R2, MAE, MAPE, AUC, AUCE per target",
        description=(
            "Join predictions (eid, instance, {name}, {name}_sd) with a reference, given as a targets "
            "table or a raw UK Biobank export, and write metrics.csv, metrics.md and report.html "
            "(agreement, Bland-Altman, calibration and sparsification plots) to --out."
        ),
    )
    parser.add_argument("predictions", help="predictions CSV (eid, instance, then {name} and {name}_sd per target)")
    parser.add_argument("reference", help="targets table, or a UK Biobank export (ukbconv or RAP)")
    parser.add_argument("--out", required=True, help="folder for metrics.csv, metrics.md and report.html")
    parser.add_argument("--no-report", action="store_true", help="only the metrics tables, no plots or HTML")
    parser.add_argument("--instance", type=int, default=2, help="imaging visit read from a raw export (default 2)")
    parser.add_argument("--targets", help="comma-separated target names (default: all present in both)")
    common_flags.add_force(parser, "the metrics and report in --out")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mimir.atomic import check_can_create_folder
    from mimir.cli import UsageError
    from mimir.evaluation.evaluate import evaluate_predictions, read_predictions_csv, write_metrics
    from mimir.runs.layout import EvaluationFolder
    from mimir.targets.catalog import get_target
    from mimir.targets.exports import read_reference

    for label, path in (("predictions", args.predictions), ("reference", args.reference)):
        if not Path(path).is_file():
            raise UsageError(f"no such {label} file: {path}")
    out = EvaluationFolder(Path(args.out))
    common_flags.check_replaceable([out.metrics, out.metrics_markdown, out.report], args.force)
    check_can_create_folder(out.path)  # before reading what may be large tables
    targets = [get_target(name.strip()) for name in args.targets.split(",")] if args.targets else None
    predictions = read_predictions_csv(args.predictions, args.reference)
    reference = read_reference(args.reference, instance=args.instance, targets=targets)
    metrics = evaluate_predictions(predictions, reference, targets)
    csv_path, markdown_path = write_metrics(metrics, Path(args.out))
    print(f"evaluated {len(metrics)} targets; wrote {csv_path} and {markdown_path}")
    if not args.no_report:
        from mimir.report.evaluation_report import write_evaluation_report

        report = write_evaluation_report(
            Path(args.out), predictions, reference, metrics,
            notes={"predictions": str(args.predictions), "reference": str(args.reference)},
        )
        print(f"report: {report}")
    return 0
