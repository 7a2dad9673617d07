"""Cohort maps: the normalised maps of many exams averaged per target, optionally body-aligned.

Each exam's map is first scaled to [0, 1] (`mimir.report.saliency.normalise`), so every exam
weighs the same whatever its gradient scale. Alignment (on by default) removes the largest
between-subject difference of the 2D images, body size: within each view (the coronal half on
the left, the sagittal half on the right, split where `mimir.imaging.projection` joins them) the
bounding box of the body outline is mapped linearly onto the cohort's mean box, map and water
image alike. This centres and scales; it does not warp organs onto each other, so a cohort map
is sharp where anatomy scales with the body and blurred where it does not.

The body outline of a 2D image is where the water plus fat projections reach a tenth of their
99th percentile (`image_body_mask`): projections are near zero outside the body and far above
that inside it, limbs included.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mimir.atomic import atomic_path
from mimir.protocol import BED_ROWS, COLUMNS, GRID_ROWS, IMAGE_SHAPE

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

#: First column of the sagittal view in the 256-wide image (coronal: 224 columns, sagittal: the
#: 152 rows left after the bed crop, resized together).
SAGITTAL_START = round(IMAGE_SHAPE[2] * COLUMNS / (COLUMNS + GRID_ROWS - BED_ROWS))
#: A pixel belongs to the body where water + fat reach this fraction of the image's 99th percentile.
#: Otsu's threshold, right for the volume, splits the projections into trunk and limbs instead: on
#: 4 synthetic exams its mask had Dice 0.64-0.86 with the projected body labels, this one 0.98-0.99.
BODY_FRACTION = 0.1
#: Percentiles of the body pixels' coordinates that bound its box: a stray noise pixel above the
#: threshold must not stretch it.
BOX_PERCENTILES = (0.5, 99.5)
#: Fewer body pixels than this in a view: no body outline.
MIN_BODY_PIXELS = 64
COHORT_FOLDER = "cohort"
COHORT_FIGURE = "cohort_maps.png"

#: (top, bottom, left, right) of the body in one view, in image pixels (bottom/right inclusive).
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class CohortMap:
    """One target's cohort map: its .npy (the mean normalised map) and the exams averaged into it."""

    path: Path
    exams: int


def image_body_mask(image: np.ndarray) -> np.ndarray:
    """Body pixels of a (3, 256, 256) image: water + fat projections at or above BODY_FRACTION of their 99th percentile."""
    signal = image[0].astype(np.float32) + image[1].astype(np.float32)
    return signal >= BODY_FRACTION * float(np.percentile(signal, 99))


def view_boxes(mask: np.ndarray) -> tuple[Box, Box] | None:
    """The body's box in the coronal and in the sagittal view; None when a view has no body."""
    boxes = []
    for start, stop in ((0, SAGITTAL_START), (SAGITTAL_START, mask.shape[1])):
        rows, columns = np.nonzero(mask[:, start:stop])
        if rows.size < MIN_BODY_PIXELS:
            return None
        top, bottom = np.percentile(rows, BOX_PERCENTILES)
        left, right = np.percentile(columns + start, BOX_PERCENTILES)
        if bottom <= top or right <= left:
            return None
        boxes.append((float(top), float(bottom), float(left), float(right)))
    return boxes[0], boxes[1]


def align(array: np.ndarray, boxes: tuple[Box, Box], reference: tuple[Box, Box]) -> np.ndarray:
    """`array` (H, W) resampled so each view's body box lands on the reference box (linear, zero outside)."""
    from scipy.ndimage import map_coordinates

    rows, columns = np.mgrid[: array.shape[0], : array.shape[1]].astype(np.float64)
    source_rows = np.empty_like(rows)
    source_columns = np.empty_like(columns)
    for view, (start, stop) in enumerate(((0, SAGITTAL_START), (SAGITTAL_START, array.shape[1]))):
        (top, bottom, left, right), (ref_top, ref_bottom, ref_left, ref_right) = boxes[view], reference[view]
        part = (slice(None), slice(start, stop))
        source_rows[part] = top + (rows[part] - ref_top) * (bottom - top) / max(ref_bottom - ref_top, 1.0)
        source_columns[part] = left + (columns[part] - ref_left) * (right - left) / max(ref_right - ref_left, 1.0)
    return map_coordinates(array.astype(np.float64), [source_rows, source_columns], order=1, cval=0.0)


def cohort_map(maps: list[np.ndarray], images: list[np.ndarray], *, align_bodies: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean normalised map, mean water image, exams used).

    When aligning, exams without a body outline are left out (all of them: nothing is aligned).
    """
    from mimir.report.saliency import normalise

    normalised = [normalise(saliency_map) for saliency_map in maps]
    water = [image[0].astype(np.float64) for image in images]
    if align_bodies:
        boxes = [view_boxes(image_body_mask(image)) for image in images]
        kept = [index for index, box in enumerate(boxes) if box is not None]
        if not kept:
            logger.warning("no exam has a body outline to align by: the cohort map averages the maps as they are")
            return cohort_map(maps, images, align_bodies=False)
        if len(kept) < len(boxes):
            logger.warning("%d exams without a body outline are left out of the cohort map", len(boxes) - len(kept))
        reference = tuple(tuple(np.mean([boxes[index][view] for index in kept], axis=0)) for view in range(2))
        normalised = [align(normalised[index], boxes[index], reference) for index in kept]  # type: ignore[arg-type]
        water = [align(water[index], boxes[index], reference) for index in kept]  # type: ignore[arg-type]
    return np.mean(normalised, axis=0).astype(np.float32), np.mean(water, axis=0), len(normalised)


def write_cohort_maps(index: pd.DataFrame, images: Mapping[str, Path], folder: Path, *, align: bool) -> dict[str, CohortMap]:
    """Per target of the index (explain's table), `cohort/{target}.npy` and one panel in `cohort_maps.png`.

    Returns target -> its cohort map (file and number of exams); the figure is `folder /
    COHORT_FIGURE`. Targets without any map are skipped.
    """
    from mimir.imaging.cache import load_image

    written: dict[str, CohortMap] = {}
    panels: list[tuple[str, np.ndarray, np.ndarray, int]] = []
    for target, rows in index[index["map"] != ""].groupby("target", sort=False):
        maps = [np.load(folder / relative) for relative in rows["map"]]
        exam_images = [load_image(images[exam]) for exam in rows["exam"]]
        mean_map, mean_water, used = cohort_map(maps, exam_images, align_bodies=align)
        path = folder / COHORT_FOLDER / f"{target}.npy"
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            np.save(handle, mean_map)
        written[str(target)] = CohortMap(path, used)
        panels.append((str(target), mean_map, mean_water, used))
    if panels:
        _cohort_figure(panels, folder / COHORT_FIGURE, aligned=align)
    return written


def _cohort_figure(panels: list[tuple[str, np.ndarray, np.ndarray, int]], path: Path, *, aligned: bool) -> Path:
    from mimir.explain.overlay import PANEL_HEIGHT_INCHES
    from mimir.report.figure import DISPLAY_ASPECT
    from mimir.report.plots import new_figure, save_png
    from mimir.report.saliency import draw_saliency, normalise

    panel_width = PANEL_HEIGHT_INCHES / DISPLAY_ASPECT
    figure = new_figure(len(panels) * (panel_width + 0.3) + 0.4, PANEL_HEIGHT_INCHES + 1.0)
    figure.suptitle("Mean normalised saliency" + (" (bodies aligned)" if aligned else ""), fontsize=11)
    for number, (target, mean_map, water, used) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), number + 1)
        axes.imshow(water, cmap="gray", aspect="auto", interpolation="bilinear")
        draw_saliency(axes, normalise(mean_map))
        axes.set_title(f"{target}\n{used} exams", fontsize=9)
        axes.set_xticks([])
        axes.set_yticks([])
    return save_png(figure, path)


__all__ = ["COHORT_FIGURE", "COHORT_FOLDER", "SAGITTAL_START", "CohortMap", "align", "cohort_map", "image_body_mask", "view_boxes", "write_cohort_maps"]
