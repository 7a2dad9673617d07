"""`mimir synth`: a synthetic cohort in the exact UK Biobank field-20201 format."""

from __future__ import annotations

import argparse

from mimir.cli import common_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="generate a synthetic cohort of field-20201 zips with known ground truth",
        description=(
            "Generate synthetic participants as UK Biobank field-20201 DICOM zips, with "
            "reference.csv (UK Biobank export style, realistic missingness), truth.csv "
            "(complete ground truth) and optional quirks and previews."
        ),
    )
    parser.add_argument("--n", type=int, help="number of participants (required unless --list-quirks)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same cohort)")
    parser.add_argument(
        "--out", help="output folder, empty or holding this very cohort (required unless --list-quirks)"
    )
    parser.add_argument("--instance", type=int, default=2, choices=(2, 3), help="imaging visit (2 first, 3 repeat)")
    parser.add_argument(
        "--quirks",
        default="",
        help="comma-separated real-data quirks to inject on chosen subjects, or 'all' (see --list-quirks)",
    )
    parser.add_argument("--list-quirks", action="store_true", help="list the quirks and exit")
    parser.add_argument("--preview", action="store_true", help="write a coronal/sagittal PNG per subject")
    parser.add_argument("--on-grid", action="store_true", help="write every station on the common 3 mm grid")
    parser.add_argument(
        "--thigh-muscle-sd",
        type=float,
        default=0.0,
        help="vary thigh muscle independently of body size and build: sd of the log radius factor (e.g. 0.15; default 0)",
    )
    common_flags.add_workers(parser, default=1)
    common_flags.add_where_to_run(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mimir.cli import UsageError
    from mimir.cli.progress import start_progress
    from mimir.synth import CohortConfig, generate_cohort
    from mimir.synth.quirks import QUIRKS

    if args.list_quirks:
        print("\n".join(QUIRKS))
        return 0
    if args.n is None or args.out is None:
        raise UsageError("--n and --out are required")
    workers = 1 if args.workers is None else args.workers
    where = common_flags.where_to_run(args, workers)
    quirks = QUIRKS if args.quirks.strip() == "all" else tuple(q.strip() for q in args.quirks.split(",") if q.strip())
    config = CohortConfig(
        n=args.n,
        seed=args.seed,
        instance=args.instance,
        quirks=quirks,
        preview=args.preview,
        on_grid=args.on_grid,
        thigh_muscle_sd=args.thigh_muscle_sd,
    )
    with common_flags.executor_for(args, where) as executor, start_progress(
        "synth", config.n, "subject", quiet=args.quiet
    ) as progress:
        summary = generate_cohort(config, Path(args.out), workers=executor, progress=lambda _: progress.advance())
    print(
        f"{len(summary.eids)} subjects written to {summary.out} in {summary.seconds:.1f} s "
        f"({summary.seconds_per_subject:.2f} s per subject per core); "
        f"reference.csv, truth.csv{', quirks.csv' if config.quirks else ''}"
        f"{', previews/' if config.preview else ''}"
    )
    if summary.failed:
        print(f"{len(summary.failed)} subjects failed: see the log above")
        return 1
    return 0
