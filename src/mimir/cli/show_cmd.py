"""`mimir show`: one exam's image beside its predicted measurements and 95 % intervals (a PNG)."""

from __future__ import annotations

import argparse

from mimir.devices import DEVICE_CHOICES, PRECISIONS
from mimir.explain import METHOD_NAMES


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
    parser.add_argument(
        "--cache",
        help="image cache (default with --predictions: {table stem}_cache beside the table; with "
        "--modules: a temporary folder, removed afterwards)",
    )
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="default: CUDA when present")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument(
        "--explain", metavar="TARGET",
        help="also draw the saliency map of TARGET's predicted mean over the image (needs --modules), "
        "beside the figure as {out stem}_TARGET_METHOD.png",
    )
    parser.add_argument("--method", default="gradcam", choices=METHOD_NAMES, help="saliency method of --explain")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from mimir.show import show_exam

    out = show_exam(
        args.exam, args.out, modules=args.modules, predictions=args.predictions, cache=args.cache,
        device=args.device, precision=args.precision, explain=args.explain, method=args.method,
    )
    print(f"figure: {out}")
    if args.explain:
        from mimir.show import explain_figure_path

        print(f"saliency map: {explain_figure_path(out, args.explain, args.method)}")
    return 0
