"""One exam's figure: its image beside every predicted measurement and 95 % interval.

Composes public functions (prediction or a predictions table, the image cache, the subject
figure), as `mimir.demo` does for the whole pipeline, so that `mimir show` is a thin layer. Heavy
libraries are imported when a figure is drawn, not when this module is imported.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mimir.atomic import check_can_create
from mimir.errors import MimirError, PathNotFoundError
from mimir.explain import DEFAULT_LAYER

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

#: What one exam contributes to its figure: exam name, prediction rows, cached image, and the
#: out-of-distribution note for its title ('' when no module has an OOD description).
ShownExam = tuple[str, "pd.DataFrame", "np.ndarray", str]


class ShowError(MimirError, ValueError):
    """A figure that cannot be drawn as asked (not one exam, no predictions, not a .png)."""


def show_exam(
    exam: str | Path,
    out: str | Path,
    *,
    modules: Sequence[str | Path] | None = None,
    predictions: str | Path | None = None,
    cache: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    explain: str | None = None,
    method: str = "gradcam",
    layer: str = DEFAULT_LAYER,
) -> Path:
    """Draw one exam's figure to `out` (.png): predicted with `modules`, or its row of `predictions`.

    `exam` is a zip or DICOM folder (compressed into `cache` first), a cached .npy image, or an
    exam name (e.g. 1234567_20201_2_0) whose image is in `cache`. Without `cache`, a predictions
    table's images are looked for in `{table stem}_cache` beside it, and predicting uses a
    temporary cache, removed afterwards. Returns `out`.

    `explain` (a target of the modules) also draws the saliency map of that target's mean with
    `method` (at `layer`, for the Grad-CAM methods) over each channel of the figure
    (`mimir.explain.pipeline.image_saliency` on the exam's cached image, through the module's
    networks as `mimir explain` runs them); it needs `modules`, since a table holds no network.
    """
    from mimir.report.figure import subject_figure

    exam_path, out = Path(exam), Path(out)
    if bool(modules) == (predictions is not None):
        raise ShowError("give modules to predict the exam with, or a predictions table: one of the two")
    if explain is not None:
        _check_explain(explain, method, layer, modules)
    if not exam_path.exists() and cache is None and predictions is None:
        raise PathNotFoundError(f"{exam}: no such file or folder (an exam name needs a cache, --cache)")
    _check_figure_path(out)
    if predictions is not None:
        shown = _from_table(exam_path, Path(predictions), Path(cache) if cache is not None else None)
    elif cache is not None:
        shown = _predicted(exam, modules, Path(cache), device, precision)
    else:
        with tempfile.TemporaryDirectory(prefix="mimir-show-") as temporary:
            shown = _predicted(exam, modules, Path(temporary), device, precision)
    stem, rows, image, note = shown
    saliency, caption = None, ""
    if explain is not None and modules:
        from mimir.explain.pipeline import image_saliency, method_label

        saliency = image_saliency(image, modules, explain, method=method, device=device, layer=layer)
        caption = f"where {explain}'s predicted mean comes from ({method_label(method, layer)})"
    title = _exam_title(stem) if not note else f"{_exam_title(stem)} - {note}"
    subject_figure(image, rows, title=title, path=out, saliency=saliency, saliency_caption=caption)
    return out


def _check_explain(target: str, method: str, layer: str, modules: Sequence[str | Path] | None) -> None:
    """Refuse a map that cannot be drawn before any prediction work starts."""
    from mimir.explain.pipeline import ExplainError, check_method, select_targets

    if not modules:
        raise ShowError("--explain needs --modules: a predictions table holds no network to explain")
    try:
        check_method(method, layer)
    except ExplainError as error:
        raise ShowError(str(error)) from None
    select_targets(modules, [target])


def _check_figure_path(out: Path) -> None:
    """Refuse a figure path that cannot be written before any prediction work starts."""
    if out.suffix.lower() != ".png":
        raise ShowError(f"{out}: the figure is written as .png")
    if not out.parent.is_dir():
        raise PathNotFoundError(f"{out}: the folder {out.parent} does not exist")
    check_can_create(out)  # a read-only folder or a full disk, found before the prediction


def _exam_title(stem: str) -> str:
    """'Participant 1234567, visit 2' for a UK Biobank exam name, else the name itself."""
    from mimir.imaging.cache import ExamId

    exam_id = ExamId.from_stem(stem)
    return stem if exam_id.eid is None else f"Participant {exam_id.eid}, visit {exam_id.instance}"


def _predicted(exam: str | Path, modules: Sequence[str | Path], cache: Path, device: str, precision: str) -> ShownExam:
    """Predict the one exam `exam` names, through `cache`."""
    from mimir.imaging.cache import image_path, load_image
    from mimir.inference.predict import PredictOptions, run_prediction
    from mimir.inference.table import ood_note, subject_predictions

    source = Path(exam) if Path(exam).exists() else image_path(cache, str(exam))
    if not source.exists():
        raise PathNotFoundError(f"{exam}: neither a file nor an image in {cache}")
    result = run_prediction([source], modules, PredictOptions(cache=cache, device=device, precision=precision, workers=1))
    table = result.table
    if len(table) != 1:
        raise ShowError(f"{exam} holds {len(table)} exams; show draws one")
    stem = str(table["exam"].iloc[0])
    failure = str(table["failure"].iloc[0])
    if failure:
        raise ShowError(f"{stem} has no predictions: {failure}")
    return stem, subject_predictions(table, stem), load_image(result.images[stem]), ood_note(table, stem)


def _from_table(exam: Path, predictions: Path, cache: Path | None) -> ShownExam:
    """The exam's row of a predictions table, and its image from `cache` (default: beside the table)."""
    from mimir.imaging.cache import image_path, load_image
    from mimir.inference.table import default_cache_for, ood_note, read_predictions, subject_predictions

    if not predictions.is_file():
        raise PathNotFoundError(f"{predictions}: no such predictions table")
    table = read_predictions(predictions)
    stem = exam.stem if exam.suffix in {".npy", ".zip"} else exam.name
    if exam.suffix == ".npy" and exam.is_file():
        image_file = exam
    else:
        image_file = image_path(cache if cache is not None else default_cache_for(predictions), stem)
    rows = subject_predictions(table, stem)
    return stem, rows, load_image(image_file), ood_note(table, stem)
