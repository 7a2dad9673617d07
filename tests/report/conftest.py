"""Small synthetic inputs of both reports: a merged cross-validation folder and evaluation tables.

Shared by the report tests and the browser check, which renders the same pages in Chromium.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

CROSSVAL_TARGETS = ("height", "sex")
FOLDS = 2


def merge_synthetic_folds(folder: Path) -> Path:
    """A folder as `run_crossval` leaves it (splits, reference, finished folds), then merged."""
    from mimir.learn.crossval import merge_crossval
    from mimir.learn.splits import make_splits

    rng = np.random.default_rng(1)
    n = 30
    reference = pd.DataFrame({
        "eid": np.arange(n) + 1_000_000, "instance": 2,
        "height": rng.normal(170, 10, n), "sex": (np.arange(n) % 2).astype(float),
    })
    reference.loc[::5, "height"] = np.nan
    splits = make_splits(reference, "mine", CROSSVAL_TARGETS, FOLDS, seed=0)
    (folder / "splits.json").write_text(splits.to_json())
    reference.to_csv(folder / "reference.csv", index=False)
    (folder / "crossval.json").write_text(json.dumps({"module": "mine <&>", "folds": FOLDS}))
    fold = splits.fold_column(reference["eid"])
    for k in range(FOLDS):
        fold_folder = folder / f"fold_{k}"
        fold_folder.mkdir()
        rows = reference[fold == k]
        predictions = pd.DataFrame({
            "eid": rows["eid"], "instance": 2,
            "height": rows["height"].fillna(170) + rng.normal(0, 3, len(rows)), "height_sd": 1.5,
            "sex": np.clip(rows["sex"] + rng.normal(0, 0.2, len(rows)), 0, 1), "sex_sd": 0.3,
        })
        predictions.to_csv(fold_folder / "val_predictions.csv", index=False)
        pd.DataFrame({"eid": rows["eid"], "instance": 2, "height": 170.0, "sex": 0.5}).to_csv(
            fold_folder / "baseline_predictions.csv", index=False)
        pd.DataFrame({"iteration": [3, 6], "train_loss": [2.0, 1.0 + k], "learning_rate": 1e-3,
                      "val_loss": [3.0, 2.0], "val_mae_sd": [1.0, 0.8]}).to_csv(fold_folder / "history.csv", index=False)
        (fold_folder / "weights.safetensors").write_bytes(b"placeholder")
        (fold_folder / "fold.json").write_text(json.dumps({"fold": k, "seconds": 1.0}))
    merge_crossval(folder)
    return folder


def write_evaluation_tables(folder: Path, n: int = 60) -> tuple[Path, Path]:
    """Predictions (weight, sex with sds) and their reference as CSV files in `folder`."""
    rng = np.random.default_rng(4)
    eids = np.arange(1_000_000, 1_000_000 + n)
    weight = rng.normal(80, 12, n)
    sex = rng.integers(0, 2, n).astype(float)
    reference = pd.DataFrame({"eid": eids, "instance": 2, "weight": weight, "sex": sex})
    reference.loc[3, "weight"] = np.nan
    predictions = pd.DataFrame(
        {
            "eid": eids,
            "instance": 2,
            "weight": weight + rng.normal(0, 2, n),
            "weight_sd": np.full(n, 2.0),
            "sex": np.clip(sex + rng.normal(0, 0.2, n), 0, 1),
            "sex_sd": np.full(n, 0.2),
        }
    )
    predictions_path, reference_path = folder / "predictions.csv", folder / "reference.csv"
    predictions.to_csv(predictions_path, index=False)
    reference.to_csv(reference_path, index=False)
    return predictions_path, reference_path


def write_cohort_figure(folder: Path, targets: tuple[str, ...] = CROSSVAL_TARGETS, exams: int = 3) -> Path:
    """A cohort-map figure as `mimir explain` draws it, from drawn bodies and random maps."""
    from mimir.explain.aggregate import COHORT_FIGURE, write_cohort_maps

    rng = np.random.default_rng(2)
    rows_grid, columns_grid = np.mgrid[:256, :256]
    images, records = {}, []
    for number in range(exams):
        body = ((columns_grid - 76) / (50.0 + 5 * number)) ** 2 + ((rows_grid - 128) / 115.0) ** 2 < 1
        body |= ((columns_grid - 205) / 35.0) ** 2 + ((rows_grid - 128) / 110.0) ** 2 < 1
        image = np.stack([body * 150, body * 70, body * 40]).astype(np.uint8)
        exam = f"{1_000_000 + number}_20201_2_0"
        images[exam] = folder / f"{exam}.npy"
        np.save(images[exam], image)
        for target in targets:
            saliency = (rng.random((256, 256)) * body).astype(np.float32)
            (folder / target).mkdir(exist_ok=True)
            np.save(folder / target / f"{exam}.npy", saliency)
            records.append({"exam": exam, "target": target, "map": f"{target}/{exam}.npy"})
    write_cohort_maps(pd.DataFrame(records), images, folder, align=True)
    return folder / COHORT_FIGURE


@pytest.fixture()
def merged_folder(tmp_path: Path) -> Path:
    return merge_synthetic_folds(tmp_path)


@pytest.fixture()
def cohort_figure(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cohort_figure(tmp_path_factory.mktemp("cohort_maps"))


@pytest.fixture()
def evaluation_tables(tmp_path: Path) -> tuple[Path, Path]:
    return write_evaluation_tables(tmp_path)


@pytest.fixture(scope="module")
def rendered_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both report pages, rendered once per module: {"evaluation": path, "crossval": path}; the
    cross-validation's with its cohort saliency maps, as `crossval ... --explain` writes it."""
    from mimir.cli import main
    from mimir.report.crossval_report import cohort_maps_section, write_crossval_report

    figure = write_cohort_figure(tmp_path_factory.mktemp("cohort_maps"))
    section = cohort_maps_section(figure, method="gradcam", exams={name: 3 for name in CROSSVAL_TARGETS}, folds=[0, 1], aligned=True)
    crossval = write_crossval_report(merge_synthetic_folds(tmp_path_factory.mktemp("crossval")), extra_sections=[section])
    tables = tmp_path_factory.mktemp("evaluation")
    predictions, reference = write_evaluation_tables(tables)
    assert main(["evaluate", str(predictions), str(reference), "--out", str(tables / "out")]) == 0
    return {"evaluation": tables / "out" / "report.html", "crossval": crossval}
