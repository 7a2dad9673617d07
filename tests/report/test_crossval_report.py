"""The cross-validation report, on a merged folder of synthetic folds (no training needed)."""

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from mimir.learn.crossval import merge_crossval
from mimir.learn.splits import make_splits
from mimir.report.crossval_report import write_crossval_report

TARGETS = ("height", "sex")
FOLDS = 2


@pytest.fixture()
def merged_folder(tmp_path):
    """A folder as `run_crossval` leaves it: splits, reference, and finished fold folders."""
    rng = np.random.default_rng(1)
    n = 30
    reference = pd.DataFrame({
        "eid": np.arange(n) + 1_000_000, "instance": 2,
        "height": rng.normal(170, 10, n), "sex": (np.arange(n) % 2).astype(float),
    })
    reference.loc[::5, "height"] = np.nan
    splits = make_splits(reference, "mine", TARGETS, FOLDS, seed=0)
    (tmp_path / "splits.json").write_text(splits.to_json())
    reference.to_csv(tmp_path / "reference.csv", index=False)
    (tmp_path / "crossval.json").write_text(json.dumps({"module": "mine <&>", "folds": FOLDS}))
    fold = splits.fold_column(reference["eid"])
    for k in range(FOLDS):
        folder = tmp_path / f"fold_{k}"
        folder.mkdir()
        rows = reference[fold == k]
        predictions = pd.DataFrame({
            "eid": rows["eid"], "instance": 2,
            "height": rows["height"].fillna(170) + rng.normal(0, 3, len(rows)), "height_sd": 1.5,
            "sex": np.clip(rows["sex"] + rng.normal(0, 0.2, len(rows)), 0, 1), "sex_sd": 0.3,
        })
        predictions.to_csv(folder / "val_predictions.csv", index=False)
        pd.DataFrame({"eid": rows["eid"], "instance": 2, "height": 170.0, "sex": 0.5}).to_csv(
            folder / "baseline_predictions.csv", index=False)
        pd.DataFrame({"iteration": [3, 6], "train_loss": [2.0, 1.0 + k], "learning_rate": 1e-3,
                      "val_loss": [3.0, 2.0], "val_mae_sd": [1.0, 0.8]}).to_csv(folder / "history.csv", index=False)
        (folder / "weights.safetensors").write_bytes(b"placeholder")
        (folder / "fold.json").write_text(json.dumps({"fold": k, "seconds": 1.0}))
    merge_crossval(tmp_path)
    return tmp_path


def test_report_is_one_self_contained_page_with_all_figures(merged_folder):
    path = write_crossval_report(merged_folder)
    assert path == merged_folder / "report.html"
    page = path.read_text(encoding="utf-8")
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(link.startswith(("data:", "#")) for link in links)
    text = re.sub(r"base64,[A-Za-z0-9+/=]+", "", page).lower()
    assert "http" not in text and "<script" not in text and "<link" not in text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    # validation curve, then agreement + calibration + sparsification per target
    assert len(images) == 1 + 3 * len(TARGETS)
    assert base64.b64decode(images[0]) == (merged_folder / "figures" / "validation_curve.png").read_bytes()
    for name in TARGETS:
        assert f'id="target-{name}"' in page
        for kind in ("agreement", "calibration", "sparsification"):
            assert (merged_folder / "figures" / f"{name}_{kind}.png").is_file()
    assert "mine &lt;&amp;&gt;" in page and "<&>" not in page
    assert "Ridge baseline MAE" in page and "MAE ridge" in page
    assert "AUCE after calibration" in page and "mean(z^2)" in page


def test_partial_merge_is_flagged_in_the_report(merged_folder):
    (merged_folder / "fold_1" / "fold.json").unlink()
    merge_crossval(merged_folder, allow_partial=True)
    page = write_crossval_report(merged_folder).read_text(encoding="utf-8")
    assert "PARTIAL" in page and "folds [1] are missing" in page
