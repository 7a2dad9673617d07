"""`mimir explain`: saliency maps of predicted means, per exam and target, and cohort maps."""

from __future__ import annotations

import argparse

from mimir.cli import common_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="saliency maps: where in the image each predicted measurement comes from",
        description=(
            "Predict the exams as `mimir predict` does, then write per exam and target a saliency "
            "map of the predicted mean (.npy, 256 x 256, the image's resolution) and a PNG overlay "
            "on the water, fat and fat fraction channels with the prediction and its 95 %% interval. "
            "Files go to OUT/METHOD/TARGET/EXAM.{npy,png} (OUT/METHOD-LAYER/... for a --layer other than "
            "layer4), listed in OUT/METHOD/explanations.csv. "
            "A rerun skips the exams already explained."
        ),
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="field-20201 zips, folders of zips, list files, .npy images or a cache folder (as for `mimir predict`)",
    )
    parser.add_argument("--modules", nargs="+", required=True, metavar="MODULE", help="module folders or archives")
    parser.add_argument("--targets", nargs="+", metavar="TARGET", help="targets to explain (default: every target)")
    common_flags.add_method(parser)
    common_flags.add_layer(parser)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--aggregate", action="store_true",
        help="also average the normalised maps per target over the exams: OUT/METHOD/cohort_maps.png "
        "(one panel per target) and OUT/METHOD/cohort/TARGET.npy",
    )
    parser.add_argument(
        "--no-align", dest="align", action="store_false",
        help="average the maps as they are, without centring and scaling each exam by its body outline",
    )
    parser.add_argument(
        "--no-figures", dest="figures", action="store_false",
        help="write the maps (.npy) without each exam's overlay PNG (faster; --aggregate still draws the cohort maps)",
    )
    common_flags.add_cache(parser, detail="default: a temporary folder, removed afterwards")
    common_flags.add_device(parser)
    common_flags.add_batch_size(parser, default="4 on CPU, 32 on GPU")
    common_flags.add_workers(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mimir.cli import UsageError
    from mimir.cli.progress import Stages
    from mimir.explain import ExplainOptions, explain

    missing = [path for path in args.inputs if not Path(path).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    options = ExplainOptions(
        method=args.method, layer=args.layer, targets=tuple(args.targets) if args.targets else None, cache=args.cache,
        device=args.device, batch_size=args.batch_size, workers=args.workers,
        aggregate=args.aggregate, align=args.align, figures=args.figures,
    )
    with Stages("exam", quiet=args.quiet) as progress:
        result = explain(args.inputs, args.modules, args.out, options, progress)
    print(f"maps of {result.computed} exams computed, {result.reused} already there, {result.failed} rows failed")
    print(f"index: {result.folder / 'explanations.csv'}")
    if result.cohort_maps:
        print(f"cohort maps: {result.folder / 'cohort_maps.png'}")
    n_rows = len(result.index)
    return 1 if n_rows and result.failed == n_rows else 0
