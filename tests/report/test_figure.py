"""The subject figure renders the image and lists every prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mimir.report.figure import PredictionLine, _text_rows, subject_figure
from mimir.targets.catalog import catalog


def synthetic_image() -> np.ndarray:
    rows, columns = np.mgrid[:256, :256]
    body = ((columns - 70) / 45.0) ** 2 + ((rows - 128) / 120.0) ** 2 < 1
    image = np.zeros((3, 256, 256), dtype=np.uint8)
    image[0][body], image[1][body], image[2][body] = 180, 60, 40
    return image


def test_subject_figure_all_targets(tmp_path):
    predictions = pd.DataFrame(
        [{"name": t.name, "unit": t.unit, "mean": 10.0 + i, "low": 8.0 + i, "high": 12.0 + i}
         for i, t in enumerate(catalog())]
    )
    predictions.loc[3, "low"] = np.nan
    target = tmp_path / "subject.png"
    assert subject_figure(synthetic_image(), predictions, title="Subject 1234567", path=target) == target
    with Image.open(target) as image:
        assert image.format == "PNG"
        assert image.width > image.height > 300
    assert [entry.name for entry in tmp_path.iterdir()] == ["subject.png"]


def test_subject_figure_rows_of_mappings_and_empty(tmp_path):
    rows = [{"name": "custom", "unit": "", "mean": 1.5, "low": 1.0, "high": 2.0, "module": "extra"}]
    small = subject_figure(synthetic_image(), rows, title="one", path=tmp_path / "one.png")
    empty = subject_figure(synthetic_image(), [], title="none", path=tmp_path / "none.png")
    for path in (small, empty):
        with Image.open(path) as image:
            assert image.format == "PNG"


def test_subject_figure_rejects_wrong_image(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        subject_figure(np.zeros((256, 256), np.uint8), [], title="x", path=tmp_path / "x.png")
    with pytest.raises(ValueError, match="uint8"):
        subject_figure(np.zeros((3, 256, 256), np.float32), [], title="x", path=tmp_path / "x.png")
    with pytest.raises(ValueError, match="lacks"):
        subject_figure(synthetic_image(), [{"name": "height"}], title="x", path=tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_prediction_text_and_grouping():
    lines = [
        PredictionLine("organs", "liverFat", "%", 3.456, 1.2, 6.78),
        PredictionLine("age", "age", "years", 63.21, 58.0, 68.4),
        PredictionLine("organs", "liverVolume", "L", 1.5, 1.2, 1.8),
    ]
    assert lines[0].text() == "liverFat: 3.46 (1.20 \u2013 6.78) %"
    assert lines[1].text() == "age: 63.2 (58.0 \u2013 68.4) years"
    assert PredictionLine("age", "height", "cm", 175.0, 168.44, 181.6).text() == "height: 175 (168 \u2013 182) cm"
    assert PredictionLine("x", "y", "", 0.98, 0.9123, float("nan")).text() == "y: 0.980 (0.912 \u2013 \u2013)"
    assert PredictionLine("experimental", "sex", "male=1", 0.93, float("nan"), float("nan")).text() == "sex: 0.930 male=1"
    rows = _text_rows(lines)
    assert [kind for kind, _ in rows] == ["heading", "line", "line", "gap", "heading", "line"]
    assert rows[0][1] == "Abdominal organs" and rows[4][1] == "Age"


def _panel_pixel(box: tuple[float, float, float, float], size: tuple[int, int], row: int, column: int) -> tuple[int, int]:
    """(y, x) in the PNG of image pixel (row, column) inside the panel at figure fractions `box`."""
    left, bottom, width, height = box
    x = (left + (column + 0.5) / 256 * width) * size[0]
    y = (1.0 - bottom - height + (row + 0.5) / 256 * height) * size[1]
    return int(y), int(x)


def test_subject_figure_draws_a_saliency_map_over_each_channel_panel(tmp_path):
    """The map lands where it is in every one of the three panels, and nowhere else."""
    from mimir.report.figure import _Layout, _prediction_lines, _text_rows

    rows = [{"name": "liverVolume", "unit": "L", "mean": 1.5, "low": 1.2, "high": 1.8}]
    saliency = np.zeros((256, 256), dtype=np.float32)
    saliency[60:100, 40:80] = 1.0  # a block in the coronal view, where the synthetic body is
    plain = subject_figure(synthetic_image(), rows, title="Subject", path=tmp_path / "plain.png")
    mapped = subject_figure(synthetic_image(), rows, title="Subject", path=tmp_path / "mapped.png",
                            saliency=saliency * 7.0, saliency_caption="where liverVolume comes from (gradcam)")
    with Image.open(plain) as first, Image.open(mapped) as second:
        assert second.format == "PNG" and second.size == first.size
        size = second.size
        before = np.asarray(first.convert("RGB"), dtype=np.int16)
        after = np.asarray(second.convert("RGB"), dtype=np.int16)
    difference = np.abs(after - before).sum(axis=2)
    layout = _Layout.for_text(len(_text_rows(_prediction_lines(rows))), 1)
    for panel in range(3):
        box = layout.image_box(panel)
        inside = _panel_pixel(box, size, 80, 60)
        outside = _panel_pixel(box, size, 200, 60)  # inside the body, far from the block
        assert difference[inside] > 60, (panel, difference[inside])
        assert difference[outside] == 0, (panel, difference[outside])
        assert after[inside][0] != after[inside][2] or panel == 2  # coloured, not grey, over the grey panels
    # Outside the panels only the note at the bottom changes (it says what the map shows).
    from mimir.report.plots import DPI

    changed_rows = np.nonzero(difference.sum(axis=1))[0]
    panel_top = _panel_pixel(layout.image_box(0), size, 0, 0)[0] - 1
    panel_bottom = _panel_pixel(layout.image_box(0), size, 255, 0)[0] + 1
    note_top = size[1] - int(0.5 * DPI)
    assert all(panel_top <= row <= panel_bottom or row >= note_top for row in changed_rows)
    assert (changed_rows >= note_top).any()
    changed_columns = np.nonzero(difference[panel_top:panel_bottom].sum(axis=0))[0]
    assert changed_columns.max() < _panel_pixel(layout.image_box(2), size, 0, 255)[1] + 2  # not the text


def test_subject_figure_refuses_a_saliency_map_of_another_shape(tmp_path):
    with pytest.raises(ValueError, match="saliency map must have the image's shape"):
        subject_figure(synthetic_image(), [], title="x", path=tmp_path / "x.png", saliency=np.ones((64, 64)))
    assert list(tmp_path.iterdir()) == []
