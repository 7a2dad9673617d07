"""Saliency drawn over the image: the three channels of the network input with the map on top.

The panels follow the subject figure of `mimir show` (`mimir.report.figure.draw_channel`): water
and fat projections in grey, the fat fraction slices in magma, head up, at the display aspect of
the body; the map is scaled and coloured by `mimir.report.saliency`, the one owner of how a map
is drawn (the subject figure with `--explain` and the cohort maps draw through it too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mimir.report.figure import DISPLAY_ASPECT, PredictionLine, draw_channel
from mimir.report.plots import new_figure, save_png
from mimir.report.saliency import draw_saliency, normalise

#: Height of one image panel in inches.
PANEL_HEIGHT_INCHES = 5.0
_CHANNELS = ("Water", "Fat", "Fat fraction")
_GAP_INCHES = 0.15
_TOP_INCHES = 0.9


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


__all__ = ["PANEL_HEIGHT_INCHES", "overlay_figure", "prediction_title"]
