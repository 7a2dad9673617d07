"""`mimir show`: one exam's image beside its predicted measurements and 95 % intervals (a PNG)."""

from __future__ import annotations

import argparse

from mimir.cli import common_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "show",
        help="figure of one exam: the 2D image and every prediction with its 95 %% interval",
        description=(
            "Draw one exam's figure: predict it with --modules, or take its row from a table "
            "written by `mimir predict` (--predictions)."
        ),
    )
    parser.add_argument(
        "exam", metavar="EXAM",
        help="a zip or DICOM folder (compressed into --cache first), a cached .npy image, or an exam "
        "name (e.g. 1234567_20201_2_0) whose image is in --cache",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--modules", nargs="+", metavar="MODULE", help="predict the exam with these modules")
    source.add_argument("--predictions", metavar="TABLE", help="a wide predictions table (.csv or .parquet)")
    parser.add_argument("--out", required=True, help="figure file (.png)")
    common_flags.add_cache(
        parser,
        detail="default with --predictions: {table stem}_cache beside the table; with "
        "--modules: a temporary folder, removed afterwards",
    )
    common_flags.add_device(parser)
    common_flags.add_precision(parser)
    common_flags.add_force(parser, "the figure at --out")
    parser.add_argument(
        "--explain", metavar="TARGET",
        help="also draw the saliency map of TARGET's predicted mean over each channel of the figure "
        "(needs --modules; see `mimir explain`)",
    )
    common_flags.add_method(parser, detail="the map of --explain; default: gradcam")
    common_flags.add_layer(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mimir.show import show_exam

    common_flags.check_replaceable([Path(args.out)], args.force)
    out = show_exam(
        args.exam, args.out, modules=args.modules, predictions=args.predictions, cache=args.cache,
        device=args.device, precision=args.precision, explain=args.explain, method=args.method,
        layer=args.layer,
    )
    if args.modules:  # ensembles are said before the figure line, which stays the last
        from mimir.inference.modules import member_count_line, read_spec

        ensembles = [spec for spec in map(read_spec, args.modules) if spec.n_members > 1]
        for spec in ensembles:
            print(member_count_line(spec))
    print(f"figure: {out}")
    return 0
