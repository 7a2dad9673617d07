"""`mimir predict`: exams (or cached images) through every module to one calibrated table."""

from __future__ import annotations

import argparse

from mimir.cli import common_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict every module's targets for many exams: one row per subject and visit",
        description=(
            "Compress the exams that are not cached yet (as `mimir compress`, into --cache), run "
            "every module and write one row per exam: per target the calibrated mean, sd and 95 % "
            "interval (bounded at 0 for quantities that cannot be negative; a binary target is a "
            "probability without sd or interval), plus the QC flag, the failure (stage: reason) of "
            "exams that could not be compressed or loaded (their predictions are empty), and the "
            "targets flagged as uncertain. Values are rounded per unit; a JSON data dictionary "
            "({out stem}_dictionary.json) describes every column. A rerun reuses the cache. "
            "`mimir predict merge PART_TABLE... --out TABLE` joins the tables of --part runs."
        ),
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="field-20201 zips, folders of zips, list files (as for `mimir compress`), or already "
        "compressed images: .npy files or a cache folder (a folder of .npy files without zips)",
    )
    parser.add_argument("--modules", nargs="+", required=True, metavar="MODULE", help="module folders or archives")
    parser.add_argument("--out", required=True, help="output table: .csv or .parquet")
    common_flags.add_cache(parser, detail="exams not cached yet are compressed into it (default: {out stem}_cache beside --out)")
    common_flags.add_device(parser)
    common_flags.add_batch_size(parser, default="16 on CPU, 128 on GPU")
    common_flags.add_workers(parser)
    common_flags.add_where_to_run(parser)
    parser.add_argument(
        "--gpu-workers", action="store_true",
        help="with --scheduler or --cluster: run the networks only on Dask workers that declare a GPU "
        "(`dask worker --resources GPU=1`), one batch per GPU at a time, while every worker compresses "
        "exams; implied by --device cuda (docs/scale.md)",
    )
    common_flags.add_precision(
        parser,
        detail="auto: float32 on a CPU, float16 on a GPU. bfloat16 is about twice "
        "as fast on CPUs with AVX512-BF16. A module in bfloat16 or float16 is checked against float32 on "
        "its first batch and runs in float32 when its means differ by more than 0.02 target sd",
    )
    parser.add_argument("--long", action="store_true", help="one row per exam and target instead of per exam")
    parser.add_argument(
        "--members", type=common_flags.count, metavar="K",
        help="run only the first K member networks of each ensemble module (faster; modules with fewer "
        "members run all of theirs). Ensembles add {target}_sd_aleatoric and {target}_sd_epistemic columns; "
        "their sd is the total",
    )
    common_flags.add_force(parser, "the table at --out")
    common_flags.add_exclude(parser, detail="the exams it names are neither compressed nor predicted and have no row; the summary counts them")
    common_flags.add_series_patterns(parser)
    common_flags.add_part(parser)
    parser.add_argument(
        "--column-names", default="mimir", choices=("mimir", "ukb"),
        help="mimir (default): catalog names (AtlasVatVolume, AtlasVatVolume_sd, ...); ukb: as the Research "
        "Analysis Platform names UK Biobank fields (p22407_i2, p22407_i2_sd, ...; sex is p31_i0, targets "
        "without a field keep their name), for exams of one instance",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from mimir.cli import UsageError
    from mimir.cli.progress import Stages
    from mimir.inference.predict import PredictOptions, run_prediction
    from mimir.inference.summary import summary_lines
    from mimir.inference.table import check_output_path, default_cache_for, dictionary_path, write_predictions

    where = common_flags.where_to_run(args, workers=1)
    if args.gpu_workers and where.local:
        raise UsageError("--gpu-workers only applies with --scheduler or --cluster")
    missing = [path for path in args.inputs if not Path(path).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    out = check_output_path(args.out)
    common_flags.check_replaceable([out, dictionary_path(out)], args.force)  # written together: both or neither
    cache = Path(args.cache) if args.cache else default_cache_for(out)

    options = PredictOptions(
        cache=cache, device=args.device, batch_size=args.batch_size, workers=args.workers, precision=args.precision,
        **common_flags.series_patterns(args),
        exclude=args.exclude,
        column_names=args.column_names,
        part=args.part,
        members=args.members,
        gpu_workers=args.gpu_workers,
    )
    with (
        common_flags.executor_for(args, where) as executor,
        Stages("exam", quiet=args.quiet, overlap=True) as progress,  # compression and networks overlap
    ):
        cluster = None if where.local else executor
        result = run_prediction(args.inputs, args.modules, options, progress, executor=cluster)
    writing = time.perf_counter()
    write_predictions(result.table, out, long=args.long, part=None if args.part is None else str(args.part))
    result.timings["write"] = time.perf_counter() - writing

    print("\n".join(summary_lines(result)))
    print(f"predictions: {out} (columns described in {dictionary_path(out).name})")
    n_exams = len(result.table)
    return 1 if n_exams and result.failed == n_exams else 0


#: How `mimir predict merge ...` reaches its parser: `mimir.cli.main` rewrites the two words
#: into this one (argparse cannot have both `predict INPUT...` and `predict merge ...`).
MERGE_COMMAND = "predict-merge"


def register_merge(subparsers: argparse._SubParsersAction) -> None:
    """`mimir predict merge`: not listed on its own in `mimir --help` (no help= here); `mimir
    predict --help` names it."""
    parser = subparsers.add_parser(
        MERGE_COMMAND,
        prog="mimir predict merge",
        description=(
            "Join the tables of a prediction split with --part K/N into the table one run would have "
            "written (rows sorted by exam), with its data dictionary. Refused: a part missing or given "
            "twice, parts of different splits, tables of different modules or forms, an exam in two parts."
        ),
    )
    parser.add_argument("parts", nargs="+", metavar="PART_TABLE", help="the parts' tables (.csv or .parquet), each with its data dictionary")
    parser.add_argument("--out", required=True, help="the merged table: .csv or .parquet, as the parts")
    common_flags.add_force(parser, "the table at --out")
    parser.set_defaults(handler=run_merge)


def run_merge(args: argparse.Namespace) -> int:
    from mimir.inference.merge import write_merged
    from mimir.inference.table import check_output_path, dictionary_path

    out = check_output_path(args.out)
    common_flags.check_replaceable([out, dictionary_path(out)], args.force)
    write_merged(args.parts, out)
    print(f"merged {len(args.parts)} parts: {out}")
    return 0
