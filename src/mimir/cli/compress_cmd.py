"""`mimir compress`: field-20201 zips (or DICOM folders, NIfTI pairs) to the 2D image cache."""

from __future__ import annotations

import argparse

from mimir.cli import common_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compress",
        help="read, fuse and project exams into the (3, 256, 256) image cache, with QC",
        description=(
            "Turn exams into MIMIR's 2D representation: one {exam}.npy per exam in the cache, "
            "qc.csv (one row per cached exam) and failures.csv (one row per exam that failed in "
            "this run). Already cached exams are skipped, so a rerun resumes."
        ),
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="field-20201 zips, folders holding zips (or one exam's DICOM files), or text files "
        "listing paths one per line (a line 'water.nii.gz,fat.nii.gz' is a NIfTI pair)",
    )
    common_flags.add_cache(parser, required=True, detail="made when missing")
    common_flags.add_workers(parser)
    common_flags.add_where_to_run(parser)
    common_flags.add_force(parser, "recompute exams that are already cached")
    common_flags.add_part(parser, old_spellings=True)
    parser.add_argument("--save-volumes", metavar="DIR", help="also write fused water/fat volumes as NIfTI")
    common_flags.add_series_patterns(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mimir.cli import UsageError
    from mimir.cli.progress import start_progress
    from mimir.imaging.cache import failures_path, qc_table_path
    from mimir.imaging.compress import CompressOptions, compress_exams, discover_inputs
    from mimir.imaging.compress import exam_stem
    from mimir.parallel import default_workers

    workers = args.workers if args.workers is not None else default_workers()
    where = common_flags.where_to_run(args, workers)
    part = common_flags.part_of(args)
    inputs = discover_inputs(args.inputs)
    if not inputs:
        raise UsageError("no exams found in the inputs")
    if part is not None:
        found = len(inputs)
        inputs = part.select(inputs, exam_stem)
        print(f"part {part}: {len(inputs)} of {found} exams")
        if not inputs:
            return 0  # a part may be empty when there are fewer exams than parts
    options = CompressOptions(
        cache=Path(args.cache),
        force=args.force,
        save_volumes=Path(args.save_volumes) if args.save_volumes else None,
        **common_flags.series_patterns(args),
    )
    with common_flags.executor_for(args, where) as executor, start_progress(
        "compress", len(inputs), "exam", quiet=args.quiet
    ) as progress:
        summary = compress_exams(inputs, options, workers=executor, progress=lambda _: progress.advance())
    timing = f"{summary.seconds:.1f} s wall"
    if summary.exam_seconds:  # none when every exam was cached already
        timing += f", {summary.seconds_per_exam:.2f} s per exam per core"
    print(f"done {summary.done}, skipped {summary.skipped} (already cached), failed {summary.failed}; {timing}")
    if summary.failed:
        print(f"failures: {failures_path(summary.cache)}")
    print(f"qc: {qc_table_path(summary.cache)}")
    all_failed = summary.failed > 0 and summary.failed == summary.total
    return 1 if all_failed else 0
