"""What a reader of the predictions table gets: probabilities for binary targets, the data
dictionary beside the table, UK Biobank-style column names and per-unit rounding."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from mimir.cli import main
from mimir.inference.modules import TargetSpec, load_module
from mimir.inference.predict import PredictOptions, predict
from mimir.inference.runner import ModuleRunner
from mimir.inference.table import (
    ColumnNamingError,
    data_dictionary,
    dictionary_path,
    read_predictions,
    subject_predictions,
    to_long,
    write_predictions,
)

_HELPERS = importlib.util.spec_from_file_location("synthetic_modules", Path(__file__).with_name("synthetic_modules.py"))
helpers = importlib.util.module_from_spec(_HELPERS)
_HELPERS.loader.exec_module(helpers)

#: A binary target whose standardisation spreads the network's means well beyond [0, 1], plus a
#: target outside the catalog (no field, a unit without a published error).
BINARY_TARGETS = (
    TargetSpec("sex", 31, "male=1", "binary", mean=0.5, sd=3.0),
    TargetSpec("customScore", None, "points", "continuous", mean=12.345678, sd=0.4, in_catalog=False),
)
INSTANCE_2 = [stem for stem in helpers.STEMS if stem.split("_")[2] == "2"]


@pytest.fixture(scope="module")
def binary_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return helpers.make_module(tmp_path_factory.mktemp("binary") / "binary", "binary", BINARY_TARGETS, seed=3)


@pytest.fixture()
def visit_2_cache(tmp_path: Path) -> Path:
    """The fixture images of instance 2 only (the shared `cache` mixes instances 2 and 3)."""
    folder = tmp_path / "visit2"
    folder.mkdir()
    for index, stem in enumerate(helpers.STEMS):
        if stem in INSTANCE_2:
            np.save(folder / f"{stem}.npy", helpers.realistic_image(10 + index))
    return folder


def _raw_means(module: Path, cache: Path) -> np.ndarray:
    import torch

    runner = ModuleRunner(load_module(module, "cpu"), None)
    images = np.stack([np.load(cache / f"{stem}.npy") for stem in helpers.STEMS])
    return runner.predict(torch.from_numpy(images))[0]


def test_a_binary_target_is_a_probability_without_sd_interval_or_flag(binary_module, cache):
    raw = _raw_means(binary_module, cache)[:, 0]
    assert ((raw < 0) | (raw > 1)).any(), "the fixture must produce means outside [0, 1] to test the clipping"
    table = predict([cache], [binary_module], PredictOptions(device="cpu", precision="float32"))
    np.testing.assert_allclose(table["sex"], np.clip(raw, 0.0, 1.0), rtol=1e-5, atol=1e-6)
    assert table["sex"].between(0.0, 1.0).all()
    for column in ("sex_sd", "sex_low", "sex_high"):
        assert table[column].isna().all(), column
    assert not table["uncertain"].str.contains("sex").any()


def _header(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        return next(csv.reader(handle))


@pytest.mark.parametrize("long", [False, True])
def test_the_data_dictionary_describes_every_written_column(modules, binary_module, visit_2_cache, tmp_path, long):
    table = predict([visit_2_cache], [*modules, binary_module], PredictOptions(device="cpu"))
    out = write_predictions(table, tmp_path / "predictions.csv", long=long)
    dictionary = json.loads(dictionary_path(out).read_text())
    assert dictionary_path(out) == tmp_path / "predictions_dictionary.json"
    assert [entry["column"] for entry in dictionary["columns"]] == _header(out)
    assert dictionary["form"] == ("long" if long else "wide")
    for entry in dictionary["columns"]:
        assert set(entry) == {"column", "unit", "ukb_field", "kind", "description"} and entry["description"]
    targets = {entry["target"]: entry for entry in dictionary["targets"]}
    assert targets["weight"] == {
        "target": "weight", "column": "weight", "module": "body", "unit": "kg", "ukb_field": 21002,
        "kind": "continuous", "interval": "normal, bounded at 0", "decimals": 2,
    }
    assert targets["sex"]["interval"] == "probability" and targets["sex"]["decimals"] == 3
    assert targets["customScore"]["interval"] == "normal" and targets["customScore"]["decimals"] is None
    if not long:
        by_column = {entry["column"]: entry for entry in dictionary["columns"]}
        assert by_column["liverFat_low"]["unit"] == "%" and by_column["liverFat_low"]["ukb_field"] == 40061
        assert "bounded at 0" in by_column["liverFat_low"]["description"]
        assert by_column["sex"]["kind"] == "probability" and "[0, 1]" in by_column["sex"]["description"]
        assert by_column["height_sd"]["kind"] == "sd"


def test_ukb_column_names_follow_the_research_analysis_platform(modules, binary_module, visit_2_cache, tmp_path):
    options = PredictOptions(device="cpu", column_names="ukb")
    table = predict([visit_2_cache], [*modules, binary_module], options)
    default = predict([visit_2_cache], [*modules, binary_module], PredictOptions(device="cpu"))
    renamed = {
        "height": "p50_i2", "weight": "p21002_i2", "liverFat": "p40061_i2",
        "sex": "p31_i0",  # recorded once, at baseline
        "customScore": "customScore",  # no field: keeps its name
    }
    expected = ["eid", "instance", "exam"]
    for name in renamed.values():
        expected += [name, f"{name}_sd", f"{name}_low", f"{name}_high"]
    assert list(table.columns) == [*expected, "qc_flag", "failure", "uncertain"]
    for name, column in renamed.items():
        np.testing.assert_array_equal(table[column], default[name])

    out = write_predictions(table, tmp_path / "ukb.csv")
    back = read_predictions(out)  # CSV keeps no attrs: targets are found by field in the catalog
    rows = subject_predictions(back, INSTANCE_2[0]).set_index("name")
    assert rows.loc["weight", "unit"] == "kg" and rows.loc["weight", "mean"] == back.loc[0, "p21002_i2"]
    assert set(to_long(table)["target"]) == set(renamed.values())
    assert {entry["column"] for entry in data_dictionary(table)["targets"]} == set(renamed.values())


def test_ukb_column_names_refuse_mixed_instances_before_any_work(modules, cache, tmp_path, monkeypatch):
    import mimir.inference.predict as predict_module

    def no_module_loading(*args, **kwargs):
        raise AssertionError("refused after loading the modules")

    monkeypatch.setattr(predict_module, "load_module", no_module_loading)
    with pytest.raises(ColumnNamingError, match="instances 2, 3: predict each instance into its own table"):
        predict([cache], modules, PredictOptions(device="cpu", column_names="ukb"))
    unnamed = tmp_path / "subject01.npy"
    np.save(unnamed, helpers.realistic_image(1))
    with pytest.raises(ColumnNamingError, match="'subject01'"):
        predict([unnamed], modules, PredictOptions(device="cpu", column_names="ukb"))
    with pytest.raises(ColumnNamingError, match="one of mimir, ukb"):
        predict([unnamed], modules, PredictOptions(device="cpu", column_names="rap"))


def test_predict_command_writes_ukb_names_and_the_dictionary(modules, visit_2_cache, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    assert main(["-q", "predict", str(visit_2_cache), "--modules", *map(str, modules), "--out", str(out),
                 "--device", "cpu", "--column-names", "ukb"]) == 0
    assert "p21002_i2" in _header(out) and "weight" not in _header(out)
    assert (tmp_path / "predictions_dictionary.json").is_file()
    assert "predictions_dictionary.json" in capsys.readouterr().out


def _decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def test_written_values_are_rounded_per_unit(modules, binary_module, visit_2_cache, tmp_path):
    table = predict([visit_2_cache], [*modules, binary_module], PredictOptions(device="cpu"))
    out = write_predictions(table, tmp_path / "predictions.csv")
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    steps = {"height": 1, "weight": 2, "liverFat": 2, "sex": 3}  # cm, kg, %, probability
    written = 0
    for position, row in enumerate(rows):
        for name, decimals in steps.items():
            for suffix in ("", "_sd", "_low", "_high"):
                text = row[f"{name}{suffix}"]
                if text:
                    written += 1
                    assert _decimals(text) <= decimals, f"{name}{suffix}: {text}"
                    assert float(text) == pytest.approx(table.loc[position, f"{name}{suffix}"], abs=0.5 * 10.0**-decimals + 1e-12)
        digits = row["customScore"].replace(".", "").replace("-", "").lstrip("0")
        assert len(digits) <= 6, f"6 significant digits without a published error: {row['customScore']}"
        assert float(row["customScore"]) == pytest.approx(table.loc[position, "customScore"], rel=1e-5)
    assert written == len(rows) * (3 * 4 + 1)
    assert "e-" not in out.read_text(), "no scientific notation"
