"""Evaluation plots, one PNG each: agreement, calibration, sparsification, training curves.

Figures are built as `matplotlib.figure.Figure` objects on an Agg canvas and never touch
pyplot's global state, so plotting is safe in worker processes, tests and headless servers.
Every function accepts NaN and very few points and still writes a readable figure. Legends sit
below the axes, never on the points and lines they explain.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from mimir.atomic import atomic_path
from mimir.evaluation.metrics import bias

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

#: Most error bars drawn on an agreement scatter; more would hide the points.
MAX_ERROR_BARS = 200
#: Dots per inch of every PNG (sharp in a browser, small enough to embed).
DPI = 110
#: Half-width of the Bland-Altman limits of agreement in standard deviations of the difference.
LIMITS_OF_AGREEMENT_SD = 1.96
#: Half-width of a Gaussian's central 95 % interval in standard deviations (error bars).
NORMAL_QUANTILE_95 = 1.959964

_PREDICTED_COLOUR = "#1f5fa8"
_REFERENCE_LINE_COLOUR = "#444444"
_BEFORE_COLOUR = "#c0392b"
_AFTER_COLOUR = "#1f5fa8"
_CLASS_COLOURS = ("#1f5fa8", "#d35400")


def new_figure(width_inches: float, height_inches: float) -> "Figure":
    """A figure bound to a private Agg canvas (no pyplot, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_inches, height_inches), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: "Figure", path: Path) -> Path:
    """Write `figure` to `path` atomically; a crash never leaves a truncated PNG."""
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI, facecolor="white")
    logger.debug("wrote %s", path)
    return path


def axis_label(quantity: str, unit: str) -> str:
    return f"{quantity} ({unit})" if unit else quantity


def _finite_pairs(*arrays: ArrayLike) -> list[np.ndarray]:
    """The arrays as float64 vectors, keeping only positions finite in every one."""
    vectors = [np.asarray(values, dtype=np.float64).ravel() for values in arrays]
    sizes = {vector.size for vector in vectors}
    if len(sizes) != 1:
        raise ValueError(f"arrays to plot differ in length: {[vector.size for vector in vectors]}")
    keep = np.ones(vectors[0].size, dtype=bool)
    for vector in vectors:
        keep &= np.isfinite(vector)
    return [vector[keep] for vector in vectors]


def legend_below(figure: "Figure", handles: list[Any] | None = None, *, columns: int = 3) -> None:
    """One legend for the whole figure, below its axes, so that it never covers the data.

    Without `handles`, the labelled artists of every axes are collected. The constrained
    layout of `new_figure` makes room for an "outside" legend.
    """
    if handles is None:
        handles = [handle for axes in figure.axes for handle in axes.get_legend_handles_labels()[0]]
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncols=min(columns, len(handles)),
                      fontsize=8, frameon=False)


def _no_data(axes: "Axes", message: str = "no paired values") -> None:
    axes.text(0.5, 0.5, message, transform=axes.transAxes, ha="center", va="center", color="#777777")
    axes.set_xticks([])
    axes.set_yticks([])


def _marker_style(count: int) -> dict[str, float]:
    """Smaller, fainter dots as N grows so dense clouds still show their shape."""
    if count <= 200:
        return {"s": 18.0, "alpha": 0.8}
    if count <= 5_000:
        return {"s": 8.0, "alpha": 0.4}
    return {"s": 3.0, "alpha": 0.15}


def agreement_plot(
    reference: ArrayLike,
    predicted: ArrayLike,
    *,
    name: str,
    unit: str,
    path: Path,
    sd: ArrayLike | None = None,
    binary: bool = False,
) -> Path:
    """Prediction against reference beside a Bland-Altman plot.

    For a binary target (the catalog's `Target.is_binary`) the pair is instead a box plot of the
    predicted value per reference class (0 and 1) and a histogram of the predicted values per
    class: these show separation and threshold placement without recomputing ROC statistics
    here; `sd` is not drawn for binary targets.
    """
    reference_values = np.asarray(reference, dtype=np.float64).ravel()
    predicted_values = np.asarray(predicted, dtype=np.float64).ravel()
    sd_values = (
        np.full(reference_values.shape, np.nan) if sd is None else np.asarray(sd, dtype=np.float64).ravel()
    )
    if binary:
        known, scores = _finite_pairs(reference_values, predicted_values)
        figure = _binary_agreement_figure(known, scores, name=name, unit=unit)
    else:
        known, scores, spreads = _finite_pairs_with_optional(reference_values, predicted_values, sd_values)
        figure = _continuous_agreement_figure(known, scores, spreads, name=name, unit=unit)
    return save_png(figure, path)


def _finite_pairs_with_optional(
    reference: np.ndarray, predicted: np.ndarray, sd: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Finite (reference, predicted) pairs; the sd is carried along and may stay NaN."""
    if sd.size != reference.size:
        raise ValueError(f"sd has {sd.size} values for {reference.size} references")
    reference_kept, predicted_kept, index = _finite_pairs(reference, predicted, np.arange(reference.size))
    return reference_kept, predicted_kept, sd[index.astype(np.int64)]


def _continuous_agreement_figure(
    reference: np.ndarray, predicted: np.ndarray, sd: np.ndarray, *, name: str, unit: str
) -> "Figure":
    figure = new_figure(10.0, 4.6)
    scatter_axes, bland_altman_axes = figure.subplots(1, 2)
    figure.suptitle(f"{name} (N = {reference.size:,})", fontsize=13)
    _draw_scatter(scatter_axes, reference, predicted, sd, unit=unit)
    _draw_bland_altman(bland_altman_axes, reference, predicted, unit=unit)
    legend_below(figure)
    return figure


def _draw_scatter(axes: "Axes", reference: np.ndarray, predicted: np.ndarray, sd: np.ndarray, *, unit: str) -> None:
    axes.set_title("Prediction vs reference", fontsize=11)
    axes.set_xlabel(axis_label("Reference", unit))
    axes.set_ylabel(axis_label("Predicted", unit))
    if reference.size == 0:
        _no_data(axes)
        return
    with_sd = np.flatnonzero(np.isfinite(sd) & (sd >= 0))
    if with_sd.size:
        shown = with_sd
        if shown.size > MAX_ERROR_BARS:
            shown = np.sort(np.random.default_rng(0).choice(with_sd, MAX_ERROR_BARS, replace=False))
        axes.errorbar(
            reference[shown], predicted[shown], yerr=NORMAL_QUANTILE_95 * sd[shown],
            fmt="none", ecolor="#9bb7d4", elinewidth=0.8, alpha=0.7, zorder=1,
            label=f"95 % interval ({shown.size:,} shown)" if shown.size < with_sd.size else "95 % interval",
        )
    axes.scatter(reference, predicted, color=_PREDICTED_COLOUR, edgecolors="none", zorder=2,
                 label="subjects", **_marker_style(reference.size))
    low, high = _padded_range(np.concatenate([reference, predicted]))
    axes.plot([low, high], [low, high], color=_REFERENCE_LINE_COLOUR, linewidth=1.0, linestyle="--",
              zorder=3, label="identity")
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_aspect("equal", adjustable="box")
    axes.grid(True, color="#e5e5e5", linewidth=0.6)


def _padded_range(values: np.ndarray) -> tuple[float, float]:
    low, high = float(values.min()), float(values.max())
    span = high - low
    pad = 0.05 * span if span > 0 else max(abs(low) * 0.05, 1.0)
    return low - pad, high + pad


def _draw_bland_altman(axes: "Axes", reference: np.ndarray, predicted: np.ndarray, *, unit: str) -> None:
    axes.set_title("Bland-Altman", fontsize=11)
    axes.set_xlabel(axis_label("Mean of predicted and reference", unit))
    axes.set_ylabel(axis_label("Predicted \u2212 reference", unit))
    if reference.size == 0:
        _no_data(axes)
        return
    average = (predicted + reference) / 2.0
    difference = predicted - reference
    axes.scatter(average, difference, color=_PREDICTED_COLOUR, edgecolors="none", **_marker_style(average.size))
    offset = bias(predicted, reference)  # the metrics tables' bias, one definition
    axes.axhline(offset, color="#222222", linewidth=1.2, label=f"bias {offset:+.3g}")
    if difference.size >= 2:
        spread = LIMITS_OF_AGREEMENT_SD * float(difference.std(ddof=1))
        for limit in (offset - spread, offset + spread):
            axes.axhline(limit, color=_BEFORE_COLOUR, linewidth=1.0, linestyle="--")
        axes.lines[-1].set_label(f"bias \u00b1 1.96 SD ({offset - spread:.3g}, {offset + spread:.3g})")
    axes.axhline(0.0, color="#999999", linewidth=0.6)
    axes.grid(True, color="#e5e5e5", linewidth=0.6)


def _binary_agreement_figure(reference: np.ndarray, predicted: np.ndarray, *, name: str, unit: str) -> "Figure":
    figure = new_figure(10.0, 4.6)
    box_axes, histogram_axes = figure.subplots(1, 2)
    figure.suptitle(f"{name} (N = {reference.size:,}, binary)", fontsize=13)
    classes = (0.0, 1.0)
    groups = [predicted[reference == label] for label in classes]
    labels = [f"reference {int(label)}\n(n = {group.size:,})" for label, group in zip(classes, groups, strict=True)]
    box_axes.set_title("Predicted value per reference class", fontsize=11)
    box_axes.set_ylabel(axis_label("Predicted", unit))
    histogram_axes.set_title("Distribution of predicted values", fontsize=11)
    histogram_axes.set_xlabel(axis_label("Predicted", unit))
    histogram_axes.set_ylabel("Subjects")
    if predicted.size == 0:
        _no_data(box_axes)
        _no_data(histogram_axes)
        return figure
    positions = [1, 2]
    drawn = [(position, group) for position, group in zip(positions, groups, strict=True) if group.size]
    box_axes.boxplot([group for _, group in drawn], positions=[position for position, _ in drawn],
                     widths=0.5, showfliers=False, medianprops={"color": "#222222"})
    jitter = np.random.default_rng(0)
    for (position, group), colour in zip(zip(positions, groups, strict=True), _CLASS_COLOURS, strict=True):
        offsets = jitter.uniform(-0.12, 0.12, group.size)
        box_axes.scatter(position + offsets, group, color=colour, edgecolors="none", **_marker_style(group.size))
    box_axes.set_xticks(positions, labels)
    box_axes.set_xlim(0.4, 2.6)
    box_axes.grid(True, axis="y", color="#e5e5e5", linewidth=0.6)
    bins = np.linspace(*_padded_range(predicted), 31)
    for label, group, colour in zip(classes, groups, _CLASS_COLOURS, strict=True):
        if group.size:
            histogram_axes.hist(group, bins=bins, color=colour, alpha=0.5, label=f"reference {int(label)}")
    histogram_axes.grid(True, axis="y", color="#e5e5e5", linewidth=0.6)
    legend_below(figure)
    return figure


def calibration_plot(
    expected: ArrayLike,
    observed_before: ArrayLike,
    observed_after: ArrayLike | None,
    *,
    name: str,
    path: Path,
    auce_before: float | None = None,
    auce_after: float | None = None,
    labels: tuple[str, str] = ("before calibration", "after calibration"),
) -> Path:
    """Observed share inside each central interval against its nominal coverage p.

    `labels` name the two curves; predictions that were calibrated at inference have only
    one curve, which then is better called e.g. "as predicted".
    """
    figure = new_figure(5.2, 5.0)
    axes = figure.subplots()
    axes.set_title(f"Calibration: {name}", fontsize=12)
    axes.plot([0, 1], [0, 1], color=_REFERENCE_LINE_COLOUR, linestyle="--", linewidth=1.0, label="ideal")
    curves = [(observed_before, labels[0], auce_before, _BEFORE_COLOUR, "o")]
    if observed_after is not None:
        curves.append((observed_after, labels[1], auce_after, _AFTER_COLOUR, "s"))
    for observed, label, area, colour, marker in curves:
        nominal, share = _finite_pairs(expected, observed)
        if area is not None and np.isfinite(area):
            label = f"{label} (AUCE {area:.3f})"
        axes.plot(nominal, share, color=colour, marker=marker, markersize=4, linewidth=1.5, label=label)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_aspect("equal", adjustable="box")
    axes.set_xlabel("Expected coverage of central interval p")
    axes.set_ylabel("Observed share of references inside")
    axes.grid(True, color="#e5e5e5", linewidth=0.6)
    legend_below(figure, columns=1)
    return save_png(figure, path)


def sparsification_plot(
    fractions: ArrayLike,
    mae_by_uncertainty: ArrayLike,
    mae_oracle: ArrayLike,
    *,
    name: str,
    unit: str,
    path: Path,
) -> Path:
    """MAE of what remains as the most uncertain (or, for the oracle, the worst) are removed."""
    figure = new_figure(5.2, 4.8)
    axes = figure.subplots()
    axes.set_title(f"Sparsification: {name}", fontsize=12)
    fraction_values = np.asarray(fractions, dtype=np.float64).ravel()
    for values, label, colour, style in (
        (mae_by_uncertainty, "removed by predicted uncertainty", _AFTER_COLOUR, "-"),
        (mae_oracle, "removed by true error (oracle)", _REFERENCE_LINE_COLOUR, "--"),
    ):
        removed, mae = _finite_pairs(fraction_values, values)
        axes.plot(removed * 100.0, mae, color=colour, linestyle=style, marker="o", markersize=3.5,
                  linewidth=1.5, label=label)
    axes.set_xlabel("Most uncertain predictions removed (%)")
    axes.set_ylabel(axis_label("MAE of remaining", unit))
    axes.set_xlim(left=0)
    axes.set_ylim(bottom=0)
    axes.grid(True, color="#e5e5e5", linewidth=0.6)
    legend_below(figure, columns=1)
    return save_png(figure, path)


def validation_curve_plot(history: "pd.DataFrame", *, path: Path, title: str) -> Path:
    """Training and validation loss against iteration; one colour per fold when `fold` exists.

    Validation loss is usually logged less often than training loss, so each series is drawn
    from its own finite points rather than broken at every NaN.
    """
    missing = {"iteration", "train_loss"} - set(history.columns)
    if missing:
        raise ValueError(f"history lacks column(s) {sorted(missing)}; it needs iteration, train_loss, val_loss")
    figure = new_figure(7.0, 4.4)
    axes = figure.subplots()
    axes.set_title(title, fontsize=12)
    folds = [(None, history)] if "fold" not in history.columns else list(history.groupby("fold", sort=True))
    colours = _cycle_colours(len(folds))
    drawn = 0
    for (_, rows), colour in zip(folds, colours, strict=True):
        rows = rows.sort_values("iteration")
        for column, style, marker in (("train_loss", "-", None), ("val_loss", "--", "o")):
            if column not in rows.columns:
                continue
            iteration, loss = _finite_pairs(rows["iteration"].to_numpy(), rows[column].to_numpy())
            if iteration.size == 0:
                continue
            axes.plot(iteration, loss, color=colour, linestyle=style, marker=marker, markersize=3,
                      linewidth=1.2 if column == "train_loss" else 1.5, alpha=0.85)
            drawn += 1
    if drawn == 0:
        _no_data(axes, "no finite losses recorded")
    else:
        legend_below(figure, _curve_legend_handles(folds, colours), columns=6)
    axes.set_xlabel("Iteration")
    axes.set_ylabel("Loss")
    axes.grid(True, color="#e5e5e5", linewidth=0.6)
    return save_png(figure, path)


def _curve_legend_handles(folds: list[tuple[object, object]], colours: list[str]) -> list[object]:
    """Line style says train or validation; colour says fold (one entry each, not one per pair)."""
    from matplotlib.lines import Line2D

    handles: list[object] = [
        Line2D([], [], color="#333333", linestyle="-", label="train"),
        Line2D([], [], color="#333333", linestyle="--", marker="o", markersize=3, label="validation"),
    ]
    if len(folds) > 1:
        handles.extend(
            Line2D([], [], color=colour, linewidth=3, label=f"fold {fold}")
            for (fold, _), colour in zip(folds, colours, strict=True)
        )
    return handles


def _cycle_colours(count: int) -> list[str]:
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    return [palette[index % len(palette)] for index in range(count)]
