"""Saliency drawn over the image: the three channels of the network input with the map on top.

The panels follow the subject figure of `mimir show` (`mimir.report.figure`): water and fat
projections in grey, the fat fraction slices in magma, head up, at the display aspect of the
body. The map is drawn in a heat colour map whose opacity grows with the saliency, so the anatomy
stays readable where the network did not look.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mimir.report.figure import DISPLAY_ASPECT, FAT_FRACTION_FULL_SCALE_PERCENT, PredictionLine
from mimir.report.plots import new_figure, save_png

#: Saliency at this percentile of a map (and above) is drawn at full strength.
DISPLAY_PERCENTILE = 99.5
#: Opacity of the strongest saliency over the image.
MAX_ALPHA = 0.65
#: Height of one image panel in inches.
PANEL_HEIGHT_INCHES = 5.0
_CHANNELS = ("Water", "Fat", "Fat fraction")
_GAP_INCHES = 0.15
_TOP_INCHES = 0.9


def normalise(saliency_map: np.ndarray) -> np.ndarray:
    """The map scaled to [0, 1], its DISPLAY_PERCENTILE at 1 (a map of zeros stays zeros).

    A percentile rather than the maximum: a few extreme pixels (common in gradient maps) would
    otherwise leave everything else invisible and dominate cohort averages.
    """
    values = np.nan_to_num(np.asarray(saliency_map, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(np.percentile(values, DISPLAY_PERCENTILE)) if values.size else 0.0
    if top <= 0.0:
        top = float(values.max(initial=0.0))
    if top <= 0.0:
        return np.zeros_like(values, dtype=np.float32)
    return np.clip(values / top, 0.0, 1.0).astype(np.float32)


def prediction_title(line: PredictionLine | None, method: str) -> str:
    """'liver_volume: 1.52 (1.31 – 1.73) L, 95 % interval · gradcam', or the method alone."""
    if line is None:
        return method
    return f"{line.text()}, mean (95 % interval) \u00b7 {method}"


def overlay_figure(
    image: np.ndarray, saliency_map: np.ndarray, *, title: str, subtitle: str, path: Path
) -> Path:
    """Write the overlay PNG of one exam and target atomically; returns `path`."""
    channels = np.asarray(image)
    shown = normalise(saliency_map)
    panel_width = PANEL_HEIGHT_INCHES / DISPLAY_ASPECT
    width, height = 3 * panel_width + 4 * _GAP_INCHES, PANEL_HEIGHT_INCHES + _TOP_INCHES + _GAP_INCHES
    figure = new_figure(width, height)
    figure.set_layout_engine("none")  # sizes are known; the constrained layout cost more than the drawing
    figure.suptitle(f"{title}\n{subtitle}", fontsize=10, y=1.0 - 0.1 / height, va="top")
    for index, name in enumerate(_CHANNELS):
        left = _GAP_INCHES + index * (panel_width + _GAP_INCHES)
        axes = figure.add_axes((left / width, _GAP_INCHES / height, panel_width / width, PANEL_HEIGHT_INCHES / height))
        draw_channel(axes, channels[index], index)
        draw_saliency(axes, shown)
        axes.set_title(name, fontsize=9)
    return save_png(figure, path)


def draw_channel(axes: Any, channel: np.ndarray, index: int) -> None:
    """One channel as the subject figure shows it: grey projections, magma fat fraction in %."""
    if index < 2:
        axes.imshow(channel, cmap="gray", vmin=0, vmax=255, aspect="auto", interpolation="bilinear")
    else:
        percent = np.asarray(channel, dtype=np.float32) * (FAT_FRACTION_FULL_SCALE_PERCENT / 255.0)
        axes.imshow(percent, cmap="magma", vmin=0.0, vmax=FAT_FRACTION_FULL_SCALE_PERCENT, aspect="auto",
                    interpolation="bilinear")
    axes.set_xticks([])
    axes.set_yticks([])


def draw_saliency(axes: Any, shown: np.ndarray) -> None:
    """A [0, 1] map in 'jet', transparent where it is zero."""
    axes.imshow(shown, cmap="jet", vmin=0.0, vmax=1.0, alpha=MAX_ALPHA * shown, aspect="auto",
                interpolation="bilinear")


__all__ = ["DISPLAY_PERCENTILE", "draw_channel", "draw_saliency", "normalise", "overlay_figure", "prediction_title"]
