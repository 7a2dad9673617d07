"""Predictions keep their recorded values: the golden module on the golden exams, end to end
from the zips (plus one unreadable cached image), written as the user gets the table."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

#: What "unchanged" means for a prediction: equal to 1e-6, relative to the value's magnitude, or
#: within one rounding step of its column (the table is rounded per unit: a last-bit difference
#: next to a rounding boundary moves the written value by one step, and by no more).
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


def _assert_same_value(column: str, exam: str, found: str, expected: str, step: float) -> None:
    if not (_is_number(found) and _is_number(expected)):
        assert found == expected, f"{exam} {column}: {found!r} != recorded {expected!r}"
        return
    a, b = float(found), float(expected)
    if math.isnan(b):
        assert math.isnan(a), f"{exam} {column}: {a} where the recording has NaN"
        return
    assert abs(a - b) <= max(TOLERANCE * max(1.0, abs(b)), step * (1 + TOLERANCE)), f"{exam} {column}: {a} != recorded {b}"


def _rounding_steps(dictionary: Path) -> dict[str, float]:
    """Each written column's rounding step, from the data dictionary written beside the table."""
    document = json.loads(dictionary.read_text())
    steps = {}
    for target in document["targets"]:
        for suffix in ("", "_sd", "_low", "_high"):
            steps[target["column"] + suffix] = 0.0 if target["decimals"] is None else 10.0 ** -target["decimals"]
    return steps


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
    steps = _rounding_steps(tmp_path / "predictions_dictionary.json")
    for row, expected in zip(rows, expected_rows, strict=True):
        for column in expected_columns:
            _assert_same_value(column, row["exam"], row[column], expected[column], steps.get(column, 0.0))

    compressed = recordings.read("compress.json")["zip"]
    for path in golden_exams.zips:
        assert recordings.sha256_file(cache / f"{path.stem}.npy") == compressed[path.stem]["image_sha256"]


def test_golden_predictions_exercise_every_column(recordings):
    """The recording is worth pinning: varied values, a flagged target, a failed exam."""
    import pandas as pd

    table = pd.read_csv(recordings.data / "predictions.csv", dtype={"failure": str, "uncertain": str, "qc_flag": str})
    predicted = table[table["failure"].isna()]
    assert len(predicted) == 10 and (table["failure"].notna()).sum() == 1
    for name in ("weight", "liverVolume"):
        assert predicted[name].std() > 0 and np.isfinite(predicted[f"{name}_sd"]).all()
    # the volume's interval reaches its physical limit on some exams, and stops there
    assert (predicted["liverVolume_low"] == 0).any() and (predicted["liverVolume_low"] >= 0).all()
    # sex is a probability, some exams' at the ends of [0, 1], without sd or interval
    assert predicted["sex"].between(0, 1).all() and predicted["sex"].isin([0.0, 1.0]).any()
    assert predicted["sex"].between(0.1, 0.9).sum() >= 5
    assert predicted[["sex_sd", "sex_low", "sex_high"]].isna().all().all()
    assert predicted["uncertain"].notna().any() and predicted["uncertain"].isna().any()
    assert predicted["qc_flag"].notna().any()
