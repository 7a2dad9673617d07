"""`mimir show`: the subject figure from modules or from a predictions table."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mimir.cli import UsageError, show_cmd
from mimir.inference.predict import PredictOptions, predict
from mimir.inference.table import subject_predictions, write_predictions

_HELPERS = importlib.util.spec_from_file_location("synthetic_modules", Path(__file__).with_name("synthetic_modules.py"))
helpers = importlib.util.module_from_spec(_HELPERS)
_HELPERS.loader.exec_module(helpers)

STEM = "1234567_20201_2_0"


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return helpers.make_module(tmp_path_factory.mktemp("modules") / "body", "body", helpers.BODY_TARGETS, seed=3)


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    folder = tmp_path / "predictions_cache"
    folder.mkdir()
    np.save(folder / f"{STEM}.npy", helpers.realistic_image(5))
    return folder


def show(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    show_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["show", *argv])
    return args.handler(args)


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > image.height > 300


def test_show_predicts_with_modules(module, cache, tmp_path):
    out = tmp_path / "figure.png"
    assert show([str(cache / f"{STEM}.npy"), "--modules", str(module), "--out", str(out), "--device", "cpu"]) == 0
    assert_png(out)


def test_show_from_a_predictions_table_and_the_cache_beside_it(module, cache, tmp_path):
    table = write_predictions(predict([cache], [module], PredictOptions(device="cpu")), tmp_path / "predictions.csv")
    out = tmp_path / "from_table.png"
    assert show([STEM, "--predictions", str(table), "--out", str(out)]) == 0
    assert_png(out)
    with pytest.raises(UsageError, match="not in the predictions table"):
        show(["7654321_20201_2_0", "--predictions", str(table), "--out", str(tmp_path / "other.png")])
    assert not (tmp_path / "other.png").exists()


def test_subject_predictions_lists_each_target_with_its_interval(module, cache):
    table = predict([cache], [module], PredictOptions(device="cpu"))
    rows = subject_predictions(table, STEM)
    assert list(rows["name"]) == ["height", "weight"]
    assert list(rows["unit"]) == ["cm", "kg"]
    assert rows.loc[0, "low"] == pytest.approx(table.loc[0, "height_low"])
    assert list(rows["module"]) == ["body", "body"]
    without_attrs = pd.DataFrame(table.to_dict(orient="list"))
    assert list(subject_predictions(without_attrs, STEM)["module"]) == ["experimental", "experimental"]


def test_show_needs_an_existing_exam_or_a_cache(module, tmp_path):
    with pytest.raises(UsageError, match="needs --cache"):
        show(["7654321_20201_2_0", "--modules", str(module), "--out", str(tmp_path / "x.png")])
    with pytest.raises(UsageError, match=".png"):
        show([str(tmp_path), "--modules", str(module), "--out", str(tmp_path / "x.jpg")])
