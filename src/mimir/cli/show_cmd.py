"""`mimir show`: one exam's image beside its predicted measurements and 95 % intervals (a PNG)."""

from __future__ import annotations

import argparse

from mimir.devices import DEVICE_CHOICES, PRECISIONS


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
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from mimir.cli import UsageError

    if not Path(args.exam).exists() and not (args.cache or args.predictions):
        raise UsageError(f"{args.exam}: no such file or folder (an exam name needs --cache)")
    if args.modules and not args.cache:
        with tempfile.TemporaryDirectory(prefix="mimir-show-") as temporary:
            args.cache = temporary
            return _show(args)
    return _show(args)


def _show(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mimir.cli import UsageError
    from mimir.devices import DeviceError
    from mimir.imaging.cache import CacheError, ExamId, load_image
    from mimir.imaging.compress import InputError
    from mimir.inference.modules import ModuleFormatError
    from mimir.inference.predict import PredictError, PredictOptions, run_prediction
    from mimir.inference.table import PredictionTableError, default_cache_for, read_predictions, subject_predictions
    from mimir.report.figure import subject_figure

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"{out}: the figure is written as .png")
    if not out.parent.is_dir():
        raise UsageError(f"{out}: the folder {out.parent} does not exist")
    exam_path = Path(args.exam)
    cache = Path(args.cache) if args.cache else None
    if args.predictions and cache is None:
        cache = default_cache_for(args.predictions)

    try:
        if args.modules:
            source = exam_path if exam_path.exists() else cache / f"{args.exam}.npy"
            if not source.exists():
                raise UsageError(f"{args.exam}: neither a file nor an image in {cache}")
            options = PredictOptions(cache=cache, device=args.device, precision=args.precision, workers=1)
            result = run_prediction([source], args.modules, options)
            table = result.table
            if len(table) != 1:
                raise UsageError(f"{args.exam} holds {len(table)} exams; show draws one")
            stem = str(table["exam"].iloc[0])
            failure = str(table["failure"].iloc[0])
            if failure:
                raise UsageError(f"{stem} has no predictions: {failure}")
            image_file = result.images[stem]
        else:
            predictions = Path(args.predictions)
            if not predictions.is_file():
                raise UsageError(f"{predictions}: no such predictions table")
            table = read_predictions(predictions)
            stem = exam_path.stem if exam_path.suffix in {".npy", ".zip"} else exam_path.name
            image_file = exam_path if exam_path.suffix == ".npy" and exam_path.is_file() else cache / f"{stem}.npy"
        rows = subject_predictions(table, stem)
        image = load_image(image_file)
    except (InputError, PredictError, PredictionTableError, ModuleFormatError, CacheError, DeviceError) as error:
        raise UsageError(str(error)) from error

    exam_id = ExamId.from_stem(stem)
    title = stem if exam_id.eid is None else f"Participant {exam_id.eid}, visit {exam_id.instance}"
    subject_figure(image, rows, title=title, path=out)
    print(f"figure: {out}")
    return 0
