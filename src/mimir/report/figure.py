"""One subject at a glance: the 2D image beside every predicted measurement and its 95 % interval.

Like Fig. 1 of the MIMIR paper, the figure is meant for a person checking one exam, so it shows
the three channels of the network input (water, fat, fat fraction) head up, and lists the
predictions as text grouped by module: text keeps 70 measurements with different units readable,
where a forest plot would need one axis per unit. With a saliency map (`mimir show --explain`)
the map is drawn over each of the three channels (`mimir.report.saliency`), so one figure shows
the prediction, its interval and where in the body it comes from.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mimir.protocol import BED_ROWS, COLUMNS, GRID_ROWS, GRID_SLICE_SPACING_MM, IMAGE_SHAPE, PIXEL_SPACING_MM
from mimir.report import MODULE_TITLES, format_like, format_significant
from mimir.report.plots import new_figure, save_png
from mimir.report.saliency import draw_saliency, normalise

logger = logging.getLogger(__name__)

#: Slices of a typical fused volume after trimming the folding artefacts; sets the display aspect.
TYPICAL_SLICES = 362
#: Height over width of the real body region one stored 256 x 256 image covers.
DISPLAY_ASPECT = (TYPICAL_SLICES * GRID_SLICE_SPACING_MM) / (
    (COLUMNS + GRID_ROWS - BED_ROWS) * PIXEL_SPACING_MM
)
#: Fat fraction stored 0-255 spans 0-50 %.
FAT_FRACTION_FULL_SCALE_PERCENT = 50.0
#: Lines of text per column before the prediction list wraps into another column.
LINES_PER_COLUMN = 42

_LINE_HEIGHT_INCHES = 0.19
_MIN_IMAGE_HEIGHT_INCHES = 5.5
_TEXT_COLUMN_WIDTH_INCHES = 4.3
_UNGROUPED = "other"


@dataclass(frozen=True)
class PredictionLine:
    """One measurement as the figure lists it."""

    module: str
    name: str
    unit: str
    mean: float
    low: float
    high: float

    def text(self) -> str:
        """`name: mean (low - high) unit`; without the interval where there is none (a probability)."""
        unit = f" {self.unit}" if self.unit else ""
        if not (np.isfinite(self.low) or np.isfinite(self.high)):
            return f"{self.name}: {format_significant(self.mean)}{unit}"
        interval = f"{format_like(self.low, self.mean)} \u2013 {format_like(self.high, self.mean)}"
        return f"{self.name}: {format_significant(self.mean)} ({interval}){unit}"


def subject_figure(
    image: np.ndarray,
    predictions: Any,
    *,
    title: str,
    path: Path,
    saliency: np.ndarray | None = None,
    saliency_caption: str = "",
) -> Path:
    """Write the subject figure PNG and return its path.

    `predictions` is a DataFrame or an iterable of mappings with name, unit, mean, low and
    high (the 95 % interval); an optional `module` column groups them, otherwise the module
    comes from the target catalog.

    `saliency`, a non-negative (256, 256) map at the image's resolution (as `mimir explain`
    writes it), is normalised (`mimir.report.saliency.normalise`) and drawn over every channel
    panel; `saliency_caption` (e.g. the target and the method) says what it shows, under the
    panels.
    """
    channels = _checked_image(image)
    shown = None if saliency is None else normalise(_checked_saliency(saliency))
    text_rows = _text_rows(_prediction_lines(predictions))
    columns = max(1, -(-len(text_rows) // LINES_PER_COLUMN))
    rows_per_column = max(1, -(-len(text_rows) // columns))
    layout = _Layout.for_text(rows_per_column, columns)

    figure = new_figure(layout.width, layout.height)
    figure.set_layout_engine("none")
    figure.suptitle(title, fontsize=14, fontweight="bold", y=1.0 - 0.12 / layout.height, va="top")
    note = "Predictions: mean (95 % interval) unit"
    if shown is not None:
        note = f"Saliency over the image: {saliency_caption or 'map given'}.   {note}"
    figure.text(_Layout.LEFT / layout.width, 0.12 / layout.height, note,
                ha="left", va="bottom", fontsize=9, color="#555555")
    _draw_channels(figure, layout, channels, shown)
    step = _LINE_HEIGHT_INCHES / layout.text_height
    for column in range(columns):
        axes = figure.add_axes(layout.text_box(column))
        axes.set_axis_off()
        _draw_text_rows(axes, text_rows[column * rows_per_column:(column + 1) * rows_per_column], step=step)
    if not text_rows:
        axes.text(0.0, 1.0, "no predictions", va="top", color="#777777", transform=axes.transAxes)
    return save_png(figure, path)


def draw_channel(axes: Any, channel: np.ndarray, index: int) -> Any:
    """One channel of the 2D image as every MIMIR figure shows it: the water (0) and fat (1)
    projections in grey, the fat fraction slices (2) in magma, in %; returns the image artist."""
    if index < 2:
        shown = axes.imshow(channel, cmap="gray", vmin=0, vmax=255, aspect="auto", interpolation="bilinear")
    else:
        percent = np.asarray(channel, dtype=np.float32) * (FAT_FRACTION_FULL_SCALE_PERCENT / 255.0)
        shown = axes.imshow(percent, cmap="magma", vmin=0.0, vmax=FAT_FRACTION_FULL_SCALE_PERCENT, aspect="auto",
                            interpolation="bilinear")
    axes.set_xticks([])
    axes.set_yticks([])
    return shown


@dataclass(frozen=True)
class _Layout:
    """Panel positions in inches, converted to figure fractions for `add_axes`.

    Placed by hand rather than by a layout engine: fixed-aspect images beside long text
    columns confuse automatic layouts, and the sizes here are all known in advance.
    """

    image_height: float
    panel_width: float
    columns: int

    TOP = 0.95  # title and panel titles
    BOTTOM = 0.95  # colour bar, its labels and the note
    LEFT = 0.2
    GAP = 0.1
    TEXT_GAP = 0.35

    @classmethod
    def for_text(cls, rows_per_column: int, columns: int) -> "_Layout":
        image_height = max(_MIN_IMAGE_HEIGHT_INCHES, rows_per_column * _LINE_HEIGHT_INCHES - 0.5)
        return cls(image_height=image_height, panel_width=image_height / DISPLAY_ASPECT, columns=columns)

    @property
    def width(self) -> float:
        images = 3 * self.panel_width + 2 * self.GAP
        return self.LEFT + images + self.TEXT_GAP + self.columns * _TEXT_COLUMN_WIDTH_INCHES + self.LEFT

    @property
    def height(self) -> float:
        return self.TOP + self.image_height + self.BOTTOM

    @property
    def text_height(self) -> float:
        return self.image_height + 0.9

    def _fraction(self, left: float, bottom: float, width: float, height: float) -> tuple[float, float, float, float]:
        return (left / self.width, bottom / self.height, width / self.width, height / self.height)

    def image_box(self, index: int) -> tuple[float, float, float, float]:
        left = self.LEFT + index * (self.panel_width + self.GAP)
        return self._fraction(left, self.BOTTOM, self.panel_width, self.image_height)

    def colour_bar_box(self, index: int) -> tuple[float, float, float, float]:
        left = self.LEFT + index * (self.panel_width + self.GAP) + 0.1 * self.panel_width
        return self._fraction(left, self.BOTTOM - 0.3, 0.8 * self.panel_width, 0.14)

    def text_box(self, column: int) -> tuple[float, float, float, float]:
        left = self.LEFT + 3 * self.panel_width + 2 * self.GAP + self.TEXT_GAP + column * _TEXT_COLUMN_WIDTH_INCHES
        top = self.BOTTOM + self.image_height + 0.5
        return self._fraction(left, top - self.text_height, _TEXT_COLUMN_WIDTH_INCHES, self.text_height)


def _checked_image(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.shape != IMAGE_SHAPE:
        raise ValueError(f"subject image must have shape {IMAGE_SHAPE}, got {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"subject image must be uint8 (the cached 2D format), got {array.dtype}")
    return array


def _checked_saliency(saliency: np.ndarray) -> np.ndarray:
    array = np.asarray(saliency)
    if array.shape != IMAGE_SHAPE[1:]:
        raise ValueError(f"saliency map must have the image's shape {IMAGE_SHAPE[1:]}, got {array.shape}")
    return array


def _draw_channels(figure: Any, layout: _Layout, channels: np.ndarray, saliency: np.ndarray | None) -> None:
    """The three channel panels; a [0, 1] saliency map over each (after the channel, so on top)."""
    titles = ("Water", "Fat", "Fat fraction")
    for index, name in enumerate(titles):
        axes = figure.add_axes(layout.image_box(index))
        shown = draw_channel(axes, channels[index], index)
        if saliency is not None:
            draw_saliency(axes, saliency)
        if index < 2:
            axes.set_title(f"{name}\ncoronal | sagittal projection", fontsize=10)
        else:
            axes.set_title(f"{name}\ncoronal | sagittal slice", fontsize=10)
            colour_bar = figure.colorbar(shown, cax=figure.add_axes(layout.colour_bar_box(index)),
                                         orientation="horizontal")
            colour_bar.set_label("Fat fraction (%)", fontsize=9)
            colour_bar.ax.tick_params(labelsize=8)


def _prediction_lines(predictions: Any) -> list[PredictionLine]:
    records = _records(predictions)
    lines = []
    for record in records:
        missing = {"name", "mean", "low", "high"} - set(record)
        if missing:
            raise ValueError(f"prediction row lacks {sorted(missing)}: {record!r}")
        name = str(record["name"])
        lines.append(
            PredictionLine(
                module=str(record.get("module") or _catalog_module(name)),
                name=name,
                unit=_text(record.get("unit")),
                mean=_number(record["mean"]),
                low=_number(record["low"]),
                high=_number(record["high"]),
            )
        )
    return lines


def _records(predictions: Any) -> list[Mapping[str, Any]]:
    if hasattr(predictions, "to_dict") and hasattr(predictions, "columns"):
        return predictions.to_dict(orient="records")
    if isinstance(predictions, Iterable):
        return [dict(row) for row in predictions]
    raise TypeError(f"predictions must be a DataFrame or rows of mappings, got {type(predictions).__name__}")


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


def _catalog_module(name: str) -> str:
    from mimir.targets.catalog import get_target

    try:
        return get_target(name).module
    except KeyError:
        return _UNGROUPED


def _text_rows(lines: list[PredictionLine]) -> list[tuple[str, str]]:
    """(kind, text) rows: a heading per module (in order of first appearance), then its lines."""
    modules = list(dict.fromkeys(line.module for line in lines))
    rows: list[tuple[str, str]] = []
    for module in modules:
        if rows:
            rows.append(("gap", ""))
        rows.append(("heading", MODULE_TITLES.get(module, module)))
        rows.extend(("line", line.text()) for line in lines if line.module == module)
    return rows


def _draw_text_rows(axes: Any, rows: list[tuple[str, str]], *, step: float) -> None:
    """Rows top down, `step` apart in axes fraction (a fixed line height, however few rows)."""
    for index, (kind, text) in enumerate(rows):
        y = 1.0 - index * step
        if kind == "heading":
            axes.text(0.0, y, text, va="top", ha="left", fontsize=10, fontweight="bold", color="#1f5fa8",
                      transform=axes.transAxes)
        elif kind == "line":
            axes.text(0.02, y, text, va="top", ha="left", fontsize=8.5, family="DejaVu Sans",
                      transform=axes.transAxes)
