"""The predictions table: intervals, the long form, CSV and Parquet, and output paths checked first."""

from __future__ import annotations

import builtins
import importlib.util
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mimir.inference.predict import PredictOptions, predict
from mimir.inference.table import (
    LONG_COLUMNS,
    Z95,
    OutputPathError,
    ParquetUnavailableError,
    PredictionTableError,
    check_output_path,
    read_predictions,
    rounded,
    subject_predictions,
    to_long,
    write_predictions,
)

_HELPERS = importlib.util.spec_from_file_location("synthetic_modules", Path(__file__).with_name("synthetic_modules.py"))
helpers = importlib.util.module_from_spec(_HELPERS)
_HELPERS.loader.exec_module(helpers)

STEMS = helpers.STEMS


def test_interval_is_mean_plus_minus_1_96_sd_bounded_at_0(modules, cache):
    table = predict([cache], modules, PredictOptions(device="cpu", precision="float32"))
    assert Z95 == pytest.approx(1.959964, abs=1e-6)
    for name in ("height", "liverFat"):
        np.testing.assert_allclose(table[f"{name}_high"], table[name] + 1.959964 * table[f"{name}_sd"], rtol=1e-6)
        expected_low = np.maximum(table[name] - 1.959964 * table[f"{name}_sd"], 0.0)
        np.testing.assert_allclose(table[f"{name}_low"], expected_low, rtol=1e-6)
    # liver fat (4 % +- 4 %) would reach below 0 % on every exam: its bound stops at the limit
    assert (table["liverFat_low"] == 0.0).all() and (table["height_low"] > 0).all()


def test_long_format_has_one_row_per_exam_and_target(modules, cache, tmp_path):
    table = predict([cache], modules, PredictOptions(device="cpu"))
    long = to_long(table)
    assert list(long.columns) == list(LONG_COLUMNS)
    assert len(long) == len(STEMS) * 3
    first = long[(long["exam"] == STEMS[2]) & (long["target"] == "liverFat")].iloc[0]
    assert (first["module"], first["unit"], first["eid"], first["instance"]) == ("organs", "%", 3456789, 3)
    assert first["mean"] == pytest.approx(table.iloc[2]["liverFat"])
    assert first["high"] == pytest.approx(table.iloc[2]["liverFat_high"])
    out = write_predictions(table, tmp_path / "long.csv", long=True)
    assert len(pd.read_csv(out)) == len(STEMS) * 3


def test_csv_round_trip_and_atomic_write(modules, cache, tmp_path):
    table = predict([cache], modules, PredictOptions(device="cpu"))
    out = write_predictions(table, tmp_path / "predictions.csv")
    back = read_predictions(out)
    np.testing.assert_allclose(back["weight_sd"], table["weight_sd"], atol=0.005)  # kg: 2 decimals
    assert list(back["failure"]) == [""] * len(STEMS)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cache", "predictions.csv", "predictions_dictionary.json"]


def test_parquet_output(modules, cache, tmp_path):
    pytest.importorskip("pyarrow")
    table = predict([cache], modules, PredictOptions(device="cpu"))
    back = pd.read_parquet(write_predictions(table, tmp_path / "predictions.parquet"))
    assert list(back.columns) == list(table.columns)
    np.testing.assert_array_equal(back["height"], rounded(table)["height"])  # rounded per unit, as CSV is
    pd.testing.assert_frame_equal(read_predictions(tmp_path / "predictions.parquet"), back)


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name == "pyarrow":
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(ParquetUnavailableError, match=r"pip install 'mimir-ukb\[parquet\]'"):
        check_output_path(tmp_path / "predictions.parquet")


def test_unwritable_output_is_refused(cache, tmp_path):
    with pytest.raises(OutputPathError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "predictions.csv")
    with pytest.raises(OutputPathError, match=".csv or .parquet"):
        check_output_path(tmp_path / "predictions.xlsx")
    with pytest.raises(OutputPathError, match="folder"):
        check_output_path(cache)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputPathError, match="cannot write"):
            check_output_path(folder / "predictions.csv")
    finally:
        folder.chmod(0o700)


def test_subject_predictions_lists_each_target_with_its_interval(modules, cache):
    table = predict([cache], modules[:1], PredictOptions(device="cpu"))
    rows = subject_predictions(table, STEMS[0])
    assert list(rows["name"]) == ["height", "weight"]
    assert list(rows["unit"]) == ["cm", "kg"]
    assert rows.loc[0, "low"] == pytest.approx(table.loc[0, "height_low"])
    assert list(rows["module"]) == ["body", "body"]
    without_attrs = pd.DataFrame(table.to_dict(orient="list"))
    assert list(subject_predictions(without_attrs, STEMS[0])["module"]) == ["experimental", "experimental"]
    with pytest.raises(PredictionTableError, match="not in the predictions table"):
        subject_predictions(table, "7654321_20201_2_0")


def test_a_failing_table_write_is_one_line_that_keeps_the_cache(modules, cache, tmp_path, monkeypatch):
    import errno

    import mimir.inference.table as table_module
    from mimir.atomic import UnwritableError

    table = predict([cache], modules[:1], PredictOptions(device="cpu"))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    out = tmp_path / "predictions.csv"
    with pytest.raises(UnwritableError) as caught:
        table_module.write_predictions(table, out)
    assert str(caught.value) == (
        f"{out} could not be written (No space left on device); nothing was written there; "
        "compressed images stay in their cache, so a rerun does not compress again"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cache"], "neither the table nor its dictionary"
