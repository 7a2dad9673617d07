"""The cross-validation report: one self-contained page for a merged cross-validation folder.

Per target: agreement scatter with Bland-Altman plot (calibrated 95 % intervals as error bars),
calibration curve before and after calibration, and the sparsification curve. Before them, the
training and validation loss of every fold over its checkpoints, overlaid, and a summary table
like the paper's with the published values beside ours. The ridge baseline appears in each
target's numbers and in a side-by-side table in the page header.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from mimir.evaluation.evaluate import column_values
from mimir.report import format_significant
from mimir.report.html import ReportSection, format_metric, write_report
from mimir.report.plots import validation_curve_plot
from mimir.report.target_figures import target_figures
from mimir.runs.layout import CrossvalFolder

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

VALIDATION_SECTION = "validation-curve"

#: Summary column -> key shown in each target's numbers (keys html.py knows how to title).
_SECTION_METRICS = {
    "n": "n", "icc": "icc", "r2": "r2", "mae": "mae", "mape_percent": "mape_percent", "auc": "auc",
    "auce": "auce_before", "auce_calibrated": "auce_after", "variance_scale": "variance_scale",
    "baseline_icc": "Ridge baseline ICC", "baseline_r2": "Ridge baseline R\u00b2", "baseline_mae": "Ridge baseline MAE",
}


def _histories(folder: CrossvalFolder, folds: int) -> "pd.DataFrame":
    import pandas as pd

    parts = []
    for fold in range(folds):
        path = folder.fold(fold).history
        if path.is_file():
            parts.append(pd.read_csv(path).assign(fold=fold))
    if not parts:
        return pd.DataFrame(columns=["iteration", "train_loss", "val_loss", "fold"])
    return pd.concat(parts, ignore_index=True)


def _baseline_note(summary: "pd.DataFrame") -> str:
    """A fixed-width table of MAE and ICC, network beside ridge baseline (the page shows notes as text)."""
    width = max(12, *(len(str(name)) for name in summary["name"]))
    lines = [f"{'target':<{width}}  {'MAE net':>10}  {'MAE ridge':>10}  {'ICC net':>8}  {'ICC ridge':>9}"]
    for row in summary.to_dict(orient="records"):
        lines.append(
            f"{row['name']:<{width}}  {format_significant(row['mae']):>10}  {format_significant(row['baseline_mae']):>10}"
            f"  {format_metric('icc', row['icc']):>8}  {format_metric('icc', row['baseline_icc']):>9}"
        )
    return "\n".join(lines)


def _read_json(path: Path) -> dict[str, object]:
    """A record of the folder, or {} when it is absent (the page then shows less)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def _notes(folder: CrossvalFolder, summary: "pd.DataFrame") -> dict[str, str]:
    record = _read_json(folder.record)
    data = _read_json(folder.data_summary)
    merge = record.get("merge", {})
    notes = {
        "module": str(record.get("module", data.get("module", ""))),
        "folds": str(record.get("folds", "")),
        "subjects / exams": f"{data.get('n_subjects', '?')} / {data.get('n_exams', '?')}",
        "missing target values": (
            f"{100 * data['missing_fraction']:.1f} %" if isinstance(data.get("missing_fraction"), float) else "?"
        ),
    }
    if merge.get("partial"):
        notes["PARTIAL"] = f"folds {merge.get('missing_folds')} are missing: these numbers cover only part of the data"
    config = record.get("config", {})
    if config:
        notes["network"] = (
            f"{config.get('architecture')} (init {config.get('init')}), {config.get('iterations')} iterations, "
            f"batch {config.get('batch_size')}, learning rate {config.get('learning_rate')}"
        )
    notes["calibration"] = (
        "one variance scale factor per target, c = mean(z^2) over the out-of-fold predictions "
        "(the Gaussian-NLL optimum); AUCE after calibration is in-sample"
    )
    if summary["baseline_mae"].notna().any():
        notes["ridge baseline"] = _baseline_note(summary)
    return notes


def write_crossval_report(out: Path | str) -> Path:
    """Write `out/report.html` (figures under `out/figures/`) from a merged cross-validation folder."""
    import pandas as pd

    from mimir.targets.catalog import get_target

    folder = CrossvalFolder(out)
    summary = pd.read_csv(folder.summary)
    calibrated = pd.read_csv(folder.oof_predictions_calibrated)
    uncalibrated = pd.read_csv(folder.oof_predictions)
    reference = pd.read_csv(folder.reference)
    folds = int(json.loads(folder.splits.read_text())["folds"])
    names = list(summary["name"])
    reference_part = reference[["eid", "instance", *names]].rename(columns={n: f"{n}__reference" for n in names})
    uncalibrated_sd = uncalibrated[["eid", "instance", *(f"{n}_sd" for n in names)]].rename(
        columns={f"{n}_sd": f"{n}__sd_before" for n in names}
    )
    joined = calibrated.merge(reference_part, on=["eid", "instance"], how="inner").merge(
        uncalibrated_sd, on=["eid", "instance"], how="left"
    )
    figures = folder.figures
    figures.mkdir(parents=True, exist_ok=True)

    sections = [
        ReportSection(
            VALIDATION_SECTION,
            "Training and validation loss over checkpoints (all folds)",
            [validation_curve_plot(_histories(folder, folds), path=figures / "validation_curve.png",
                                   title="Gaussian NLL per fold (validation = the held-out fold)")],
        )
    ]
    for row in summary.to_dict(orient="records"):
        name = str(row["name"])
        unit = str(row.get("unit") or "") if not _missing(row.get("unit")) else get_target(name).unit
        metrics = {
            key: float(row[column])
            for column, key in _SECTION_METRICS.items()
            if column in row and not _missing(row[column])
        }
        title = f"{name} ({unit})" if unit else name
        figure_paths = target_figures(
            name, unit, column_values(joined, f"{name}__reference"), column_values(joined, name), column_values(joined, f"{name}_sd"),
            figures, sd_before_calibration=column_values(joined, f"{name}__sd_before"),
        )
        sections.append(ReportSection(name, title, figure_paths, metrics))
    module = _read_json(folder.record).get("module", "")
    return write_report(
        folder.path,
        title=f"MIMIR cross-validation: {module}",
        summary_table=summary,
        sections=sections,
        notes=_notes(folder, summary),
    )


def _missing(value: object) -> bool:
    try:
        return value is None or math.isnan(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
