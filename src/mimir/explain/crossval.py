"""Cohort maps of a cross-validation: every validation exam explained by its own fold's network.

The cross-validation report shows out-of-fold predictions: each exam predicted by the network
that did not see it. Its cohort maps follow the same rule. For each merged fold, the fold's
training run is built into a module (`mimir.inference.module_build.build_module`, with the
cross-validation's calibration, into a temporary folder) and its validation exams (the rows of
`oof_predictions.csv` with that fold) are explained through `mimir.explain.explain`, all folds
into one folder, `CV/explain/METHOD/` (`CrossvalFolder.explanations`; `METHOD-LAYER/` for
another Grad-CAM layer, `pipeline.method_label`); the maps of all folds are
then averaged per target by `mimir.explain.aggregate.write_cohort_maps`.

The report itself is drawn by `mimir.report.crossval_report` from what this returns (report/
never imports explain/; the command composes the two). Maps already there are reused, so a
second merge after more folds finished explains only the new folds' exams.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mimir.atomic import atomic_write_text
from mimir.errors import PathNotFoundError
from mimir.explain import DEFAULT_LAYER
from mimir.explain.pipeline import INDEX_FILE, ExplainError, ExplainOptions, check_method, explain, method_label

if TYPE_CHECKING:
    import pandas as pd

    from mimir.explain.aggregate import CohortMap
    from mimir.runs.layout import CrossvalFolder

logger = logging.getLogger(__name__)

#: (stage, done, total); stages are "fold K predict" and "fold K explain".
ProgressCallback = Callable[[str, int, int], None]


@dataclass
class CrossvalMaps:
    """What `explain_crossval` wrote: the maps' folder, the cohort maps, and how they were made."""

    folder: Path  # CV/explain/METHOD (METHOD-LAYER below layer4): maps, explanations.csv, cohort/, cohort_maps.png
    method: str  # as the folder names it: 'gradcam', 'gradcam-layer3'
    aligned: bool
    folds: list[int]
    index: pd.DataFrame  # explain's index of every explained exam and target, with its fold
    cohort_maps: dict[str, CohortMap] = field(default_factory=dict)
    without_image: int = 0  # out-of-fold exams whose image was not in the cache
    seconds: float = 0.0

    @property
    def figure(self) -> Path | None:
        """cohort_maps.png, one panel per target; None when no exam had a map."""
        from mimir.explain.aggregate import COHORT_FIGURE

        return self.folder / COHORT_FIGURE if self.cohort_maps else None

    @property
    def exams(self) -> dict[str, int]:
        """Target -> the exams averaged into its cohort map."""
        return {target: cohort.exams for target, cohort in self.cohort_maps.items()}


def explain_crossval(
    crossval: str | Path,
    *,
    method: str = "gradcam",
    layer: str = DEFAULT_LAYER,
    cache: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    align: bool = True,
    figures: bool = False,
    progress: ProgressCallback | None = None,
) -> CrossvalMaps:
    """Explain the out-of-fold exams of a merged cross-validation folder; write its cohort maps.

    `cache` holds the images (default: the one recorded in `data_summary.json` when the
    cross-validation ran). `figures` also draws each exam's overlay PNG (off: on a CPU a figure
    costs more than its Grad-CAM map, and the report shows only the cohort maps). `layer`: the
    residual stage of the Grad-CAM methods, as for `mimir explain --layer`. Raises ExplainError
    for a method and layer that do not go together, a folder that is not merged or a cache that
    holds none of its exams.
    """
    import pandas as pd

    from mimir.explain.aggregate import write_cohort_maps
    from mimir.inference.module_build import build_module
    from mimir.runs.layout import CrossvalFolder

    check_method(method, layer)
    started = time.perf_counter()
    folder = CrossvalFolder(crossval)
    if not folder.oof_predictions.is_file():
        raise ExplainError(f"{folder.path} has no {folder.oof_predictions.name}: merge the cross-validation first")
    images_folder = _cache_folder(folder, cache)
    oof = pd.read_csv(folder.oof_predictions, usecols=["eid", "instance", "fold"])
    images = _cached_images(images_folder)
    located = [(int(row.fold), images.get((int(row.eid), int(row.instance)))) for row in oof.itertuples()]
    without_image = sum(path is None for _, path in located)
    if without_image == len(located):
        raise ExplainError(f"{images_folder} holds none of the {len(located)} validation exams of {folder.path}; pass the cache they were cached in")
    if without_image:
        logger.warning("%d validation exams have no image in %s; the cohort maps leave them out", without_image, images_folder)
    out = folder.explanations
    folds = sorted({fold for fold, path in located if path is not None})
    parts = []
    with tempfile.TemporaryDirectory(prefix="mimir-crossval-explain-") as modules:
        for fold in folds:
            with _quiet_build():
                module = build_module(folder.fold(fold).path, folder.path, Path(modules) / f"fold_{fold}", name=f"fold_{fold}")
            exams = [path for number, path in located if number == fold and path is not None]
            result = explain(
                exams, [module], out,
                ExplainOptions(method=method, layer=layer, device=device, batch_size=batch_size, workers=1, figures=figures),
                _fold_progress(progress, fold),
            )
            parts.append(result.index.assign(fold=fold))
    index = pd.concat(parts, ignore_index=True)
    label = method_label(method, layer)
    method_folder = out / label
    atomic_write_text(method_folder / INDEX_FILE, index.to_csv(index=False))
    by_stem = {path.stem: path for _, path in located if path is not None}
    cohort_maps = write_cohort_maps(index, by_stem, method_folder, align=align)
    maps = CrossvalMaps(
        method_folder, label, align, folds, index, cohort_maps, without_image, time.perf_counter() - started,
    )
    logger.info("cohort maps of %s from %d folds in %.1f s", folder.path, len(folds), maps.seconds)
    return maps


@contextlib.contextmanager
def _quiet_build() -> Iterator[None]:
    """Building a fold's temporary module warns about what only a shipped module needs (its
    uncertainty flag, its calibration); those warnings would repeat per fold and mislead here."""
    from mimir.inference import module_build, modules

    quieted = [logging.getLogger(name) for name in (module_build.__name__, modules.__name__)]
    levels = [each.level for each in quieted]
    for each in quieted:
        each.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for each, level in zip(quieted, levels, strict=True):
            each.setLevel(level)


def _cache_folder(folder: CrossvalFolder, cache: str | Path | None) -> Path:
    """The given cache, or the one the cross-validation recorded; it must exist."""
    import json

    if cache is None:
        summary = folder.data_summary
        recorded = json.loads(summary.read_text()).get("images") if summary.is_file() else None
        if not recorded:
            raise ExplainError(f"{summary} records no image cache; pass the cache (--cache)")
        cache = Path(recorded)
        if not cache.is_dir():
            raise PathNotFoundError(f"{cache}, the image cache the cross-validation recorded, does not exist; pass --cache")
    cache = Path(cache)
    if not cache.is_dir():
        raise PathNotFoundError(f"image cache folder not found: {cache}")
    return cache


def _cached_images(cache: Path) -> dict[tuple[int, int], Path]:
    """(eid, instance) -> its image; the lowest array index where there are several, as training reads them."""
    from mimir.imaging.cache import cached_exams

    images: dict[tuple[int, int], Path] = {}
    for cached in cached_exams(cache):
        if cached.exam.eid is not None and cached.exam.instance is not None:
            images.setdefault((int(cached.exam.eid), int(cached.exam.instance)), cached.path)
    return images


def _fold_progress(progress: ProgressCallback | None, fold: int) -> ProgressCallback | None:
    if progress is None:
        return None
    return lambda stage, done, total: progress(f"fold {fold} {stage}", done, total)


__all__ = ["CrossvalMaps", "explain_crossval"]
