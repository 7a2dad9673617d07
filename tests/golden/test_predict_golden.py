"""Predictions keep their recorded values: the golden module on the golden exams, end to end
from the zips (plus one unreadable cached image), written as the user gets the table."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

#: What "unchanged" means for a prediction: equal to 1e-6, relative to the value's magnitude.
TOLERANCE = 1e-6


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _assert_same_value(column: str, exam: str, found: str, expected: str) -> None:
    if not (_is_number(found) and _is_number(expected)):
        assert found == expected, f"{exam} {column}: {found!r} != recorded {expected!r}"
        return
    a, b = float(found), float(expected)
    if math.isnan(b):
        assert math.isnan(a), f"{exam} {column}: {a} where the recording has NaN"
        return
    assert abs(a - b) <= TOLERANCE * max(1.0, abs(b)), f"{exam} {column}: {a} != recorded {b}"


def test_predictions_keep_their_recorded_values(golden_exams, golden_module, recordings, tmp_path):
    from mimir.inference.predict import PredictOptions, predict
    from mimir.inference.table import write_predictions

    broken = tmp_path / "9999999_20201_2_0.npy"
    broken.write_bytes(b"not an image")
    cache = tmp_path / "cache"
    table = predict([*golden_exams.zips, broken], [golden_module], PredictOptions(cache=cache, device="cpu", workers=1))
    written = write_predictions(table, tmp_path / "predictions.csv")
    text = written.read_text().replace(str(tmp_path), "<tmp>")
    golden = recordings.data / "predictions.csv"
    if recordings.record:
        golden.write_text(text)
    (tmp_path / "normalised.csv").write_text(text)

    columns, rows = _read_csv(tmp_path / "normalised.csv")
    expected_columns, expected_rows = _read_csv(golden)
    assert columns == expected_columns
    assert [row["exam"] for row in rows] == [row["exam"] for row in expected_rows]
    for row, expected in zip(rows, expected_rows, strict=True):
        for column in expected_columns:
            _assert_same_value(column, row["exam"], row[column], expected[column])

    compressed = recordings.read("compress.json")["zip"]
    for path in golden_exams.zips:
        assert recordings.sha256_file(cache / f"{path.stem}.npy") == compressed[path.stem]["image_sha256"]


def test_golden_predictions_exercise_every_column(recordings):
    """The recording is worth pinning: varied values, a flagged target, a failed exam."""
    import pandas as pd

    table = pd.read_csv(recordings.data / "predictions.csv", dtype={"failure": str, "uncertain": str, "qc_flag": str})
    predicted = table[table["failure"].isna()]
    assert len(predicted) == 10 and (table["failure"].notna()).sum() == 1
    for name in ("weight", "liverVolume", "sex"):
        assert predicted[name].std() > 0 and np.isfinite(predicted[f"{name}_sd"]).all()
    assert predicted["uncertain"].notna().any() and predicted["uncertain"].isna().any()
    assert predicted["qc_flag"].notna().any()
