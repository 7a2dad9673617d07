"""Every plot writes a real PNG atomically and survives NaN, tiny N and binary targets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mimir.report import format_count, format_decimals, format_like, format_significant, plots
from mimir.report.plots import (
    agreement_plot,
    calibration_plot,
    sparsification_plot,
    validation_curve_plot,
)


def assert_png(path: Path, expected: Path) -> None:
    assert path == expected
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 100 and image.height > 100
        image.verify()
    leftovers = [entry.name for entry in path.parent.iterdir() if entry.name.endswith(".part")]
    assert leftovers == []


def test_agreement_plot_continuous_with_sd_and_nan(tmp_path):
    rng = np.random.default_rng(0)
    reference = rng.normal(170.0, 9.0, 600)
    sd = rng.uniform(1.0, 3.0, reference.size)
    predicted = reference + rng.normal(0.0, sd)
    predicted[:5] = np.nan
    sd[10:20] = np.nan
    target = tmp_path / "plots" / "height.png"
    assert_png(agreement_plot(reference, predicted, name="height", unit="cm", path=target, sd=sd), target)


@pytest.mark.parametrize("count", [0, 1, 2])
def test_agreement_plot_tiny_n(tmp_path, count):
    reference = np.array([170.0, 180.0, np.nan])[:count + 1]
    predicted = np.array([171.0, 178.0, 165.0])[:count + 1]
    target = tmp_path / f"tiny{count}.png"
    sd = np.ones(count + 1)
    assert_png(agreement_plot(reference, predicted, name="height", unit="cm", path=target, sd=sd), target)


def test_agreement_plot_all_missing(tmp_path):
    target = tmp_path / "empty.png"
    assert_png(agreement_plot([np.nan, np.nan], [1.0, 2.0], name="liverFat", unit="%", path=target), target)


def test_agreement_plot_binary(tmp_path):
    rng = np.random.default_rng(1)
    reference = rng.integers(0, 2, 80).astype(float)
    predicted = np.clip(reference * 0.8 + rng.normal(0.1, 0.1, reference.size), 0.0, 1.0)
    reference[3] = np.nan
    target = tmp_path / "sex.png"
    assert_png(agreement_plot(reference, predicted, name="sex", unit="male=1", path=target, binary=True), target)
    single_class = tmp_path / "one_class.png"
    assert_png(agreement_plot([1.0], [0.7], name="sex", unit="male=1", path=single_class, binary=True), single_class)


@pytest.fixture()
def drawn_figures(monkeypatch):
    """The figures the plot functions save, kept for inspection (they are still written)."""
    figures = []
    save = plots.save_png

    def keep(figure, path):
        figures.append(figure)
        return save(figure, path)

    monkeypatch.setattr(plots, "save_png", keep)
    return figures


def _overlaps(first, second) -> bool:
    return first.x0 < second.x1 and second.x0 < first.x1 and first.y0 < second.y1 and second.y0 < first.y1


def test_legends_sit_outside_every_axes(tmp_path, drawn_figures):
    rng = np.random.default_rng(2)
    reference = rng.normal(80.0, 10.0, 300)
    predicted = reference + rng.normal(0.0, 2.0, reference.size)
    agreement_plot(reference, predicted, name="weight", unit="kg", path=tmp_path / "a.png", sd=np.full(300, 2.0))
    sex = rng.integers(0, 2, 50).astype(float)
    agreement_plot(sex, np.clip(sex + rng.normal(0, 0.2, 50), 0, 1), name="sex", unit="male=1",
                   path=tmp_path / "b.png", binary=True)
    expected = np.arange(1, 11) / 10.0
    calibration_plot(expected, expected * 0.8, expected, name="weight", path=tmp_path / "c.png",
                     auce_before=0.1, auce_after=0.01)
    sparsification_plot(expected, expected[::-1], expected[::-1] * 0.5, name="weight", unit="kg", path=tmp_path / "d.png")
    history = pd.DataFrame({"iteration": [1, 2, 1, 2], "train_loss": [2.0, 1.0, 2.5, 1.5],
                            "val_loss": [2.2, 1.2, 2.7, 1.7], "fold": [0, 0, 1, 1]})
    validation_curve_plot(history, path=tmp_path / "e.png", title="loss")
    assert len(drawn_figures) == 5
    for figure in drawn_figures:
        renderer = figure.canvas.get_renderer()
        figure.draw(renderer)
        assert [axes.get_legend() for axes in figure.axes] == [None] * len(figure.axes)
        (legend,) = figure.legends
        box = legend.get_window_extent(renderer)
        for axes in figure.axes:
            assert not _overlaps(box, axes.get_window_extent(renderer))


def test_agreement_plot_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match="differ in length"):
        agreement_plot([1.0, 2.0, 3.0], [1.0, 2.0], name="x", unit="", path=tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_calibration_plot(tmp_path):
    expected = np.arange(1, 11) / 10.0
    before = np.minimum(1.0, expected * 0.7)
    after = expected.copy()
    after[0] = np.nan
    target = tmp_path / "calibration.png"
    assert_png(
        calibration_plot(expected, before, after, name="age", path=target, auce_before=0.15, auce_after=math.nan),
        target,
    )
    only_before = tmp_path / "before.png"
    assert_png(calibration_plot(expected[:1], before[:1], None, name="age", path=only_before), only_before)


def test_sparsification_plot(tmp_path):
    fractions = np.arange(10) / 10.0
    by_uncertainty = 2.6 * (1.0 - 0.3 * fractions)
    oracle = 2.6 * (1.0 - fractions)
    by_uncertainty[-1] = np.nan
    target = tmp_path / "sparsification.png"
    assert_png(sparsification_plot(fractions, by_uncertainty, oracle, name="age", unit="years", path=target), target)
    single = tmp_path / "single.png"
    assert_png(sparsification_plot([0.0], [1.0], [1.0], name="age", unit="years", path=single), single)


def test_validation_curve_plot_folds_and_sparse_validation(tmp_path):
    iteration = np.arange(0, 1001, 50)
    folds = [
        pd.DataFrame({
            "fold": fold,
            "iteration": iteration,
            "train_loss": np.exp(-iteration / 300.0) + 0.01 * fold,
            "val_loss": np.where(iteration % 250 == 0, np.exp(-iteration / 400.0), np.nan),
        })
        for fold in range(3)
    ]
    target = tmp_path / "curves.png"
    assert_png(validation_curve_plot(pd.concat(folds), path=target, title="Training"), target)


def test_validation_curve_plot_without_validation_or_values(tmp_path):
    history = pd.DataFrame({"iteration": [0], "train_loss": [np.nan]})
    target = tmp_path / "empty_curves.png"
    assert_png(validation_curve_plot(history, path=target, title="Nothing yet"), target)
    with pytest.raises(ValueError, match="train_loss"):
        validation_curve_plot(pd.DataFrame({"iteration": [0]}), path=tmp_path / "bad.png", title="bad")


@pytest.mark.parametrize(
    ("value", "text"),
    [(1.794, "1.79"), (0.004, "0.00400"), (9.996, "10.0"), (1234.0, "1230"), (-5.039, "-5.04"), (0.0, "0"),
     (math.nan, "\u2013")],
)
def test_format_significant(value, text):
    assert format_significant(value) == text


def test_format_like_uses_the_reference_decimals():
    assert format_like(8.0, 10.0) == "8.0"
    assert format_like(1234.5, 0.5) == "1234.500"
    assert format_like(2.0, 0.0) == "2.00"
    assert format_like(math.nan, 1.0) == "\u2013"


def test_format_decimals_and_count():
    assert format_decimals(0.96549, 3) == "0.965"
    assert format_decimals(math.inf, 3) == "\u2013"
    assert format_count(38874) == "38,874"
