"""The cross-validation report: one self-contained page for a merged cross-validation folder.

Per target: agreement scatter with Bland-Altman plot (calibrated 95 % intervals as error bars),
calibration curve before and after calibration (not for binary targets), and the sparsification
curve. Before them, a summary table like the paper's with the published values beside ours, the
module's provenance, the training and validation loss of every fold over its checkpoints, and the
ridge baseline beside the network. The ridge baseline also appears in each target's numbers.
Optionally (`mimir crossval ... --explain`), a section with the cohort saliency map of each target
over the out-of-fold exams (`cohort_maps_section`; the maps come from `mimir.explain.crossval`,
which the command runs: report/ never imports explain/).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mimir.evaluation.evaluate import REFERENCE_SUFFIX, column_values
from mimir.inference.table import sd_column
from mimir.report.html import Cell, PageSection, ReportSection, Table, cell_number, format_metric, write_report
from mimir.report.plots import validation_curve_plot
from mimir.report.provenance import from_crossval_record
from mimir.report.target_figures import target_figures
from mimir.runs.layout import CrossvalFolder

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

VALIDATION_SECTION = "validation-curve"
BASELINE_SECTION = "ridge-baseline"
COHORT_MAPS_SECTION = "cohort-maps"

#: Ridge baseline table: (heading, network column, baseline column, metric key, lower is better).
_BASELINE_COLUMNS = (
    ("MAE", "mae", "baseline_mae", "mae", True),
    ("ICC", "icc", "baseline_icc", "icc", False),
    ("R\u00b2", "r2", "baseline_r2", "r2", False),
)

#: Summary column -> key shown in each target's numbers (keys html.py knows how to title).
_SECTION_METRICS = {
    "n": "n", "icc": "icc", "r2": "r2", "mae": "mae", "bias": "bias", "mape_percent": "mape_percent", "auc": "auc",
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


def _baseline_section(summary: "pd.DataFrame") -> PageSection | None:
    """Network beside ridge baseline per target; None when no baseline was run."""
    if "baseline_mae" not in summary.columns or not summary["baseline_mae"].notna().any():
        return None
    columns = ["Target"]
    for heading, _, _, _, _ in _BASELINE_COLUMNS:
        columns += [f"{heading} network", f"{heading} ridge"]
    rows = []
    for row in summary.to_dict(orient="records"):
        cells = [Cell(str(row["name"]))]
        for _, ours, baseline, key, lower_is_better in _BASELINE_COLUMNS:
            network, ridge = cell_number(row.get(ours)), cell_number(row.get(baseline))
            worse = math.isfinite(network) and math.isfinite(ridge) and (
                network > ridge if lower_is_better else network < ridge
            )
            cells += [Cell(format_metric(key, network), numeric=True, worse=worse),
                      Cell(format_metric(key, ridge), numeric=True)]
        rows.append(cells)
    return PageSection(
        BASELINE_SECTION, "Ridge baseline",
        text="Ridge regression on downsampled images, trained and tested on the same folds; "
             "shaded: the network is worse than the baseline.",
        table=Table(columns, rows),
    )


def cohort_maps_section(
    figure: Path, *, method: str, exams: Mapping[str, int], folds: Sequence[int], aligned: bool
) -> PageSection:
    """The cohort saliency maps of the out-of-fold exams: the figure (one panel per target) and
    per target the exams averaged and the method, for `write_crossval_report(extra_sections=...)`."""
    listed = ", ".join(map(str, folds))
    text = (
        f"Where in the body each target's predictions come from: the mean normalised saliency map "
        f"({method}) of each target's predicted mean over the validation exams of folds {listed}, "
        "each exam explained by its own fold's network, the one whose out-of-fold prediction this "
        "report shows"
        + ("; each exam's body outline is centred and scaled onto the cohort's mean box before averaging" if aligned else "")
        + ". Drawn over the mean water image. Methods and their checks: docs/explain.md."
    )
    rows = [[Cell(target), Cell(str(count), numeric=True), Cell(method)] for target, count in exams.items()]
    return PageSection(
        COHORT_MAPS_SECTION, f"Cohort saliency maps ({method})", text=text,
        table=Table(["Target", "Exams", "Method"], rows), figures=[figure],
    )


def _read_json(path: Path) -> dict[str, object]:
    """A record of the folder, or {} when it is absent (the page then shows less)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def _notes(folder: CrossvalFolder) -> dict[str, str]:
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
    notes["calibration"] = (
        "one variance scale factor per target, c = mean(z^2) over the out-of-fold predictions "
        "(the Gaussian-NLL optimum); AUCE after calibration is in-sample"
    )
    return notes


def write_crossval_report(out: Path | str, *, extra_sections: Sequence[PageSection] = ()) -> Path:
    """Write `out/report.html` (figures under `out/figures/`) from a merged cross-validation folder.

    `extra_sections` (e.g. a cohort map) follow the training curves and the ridge baseline,
    before the modules' sections, and are listed in the contents.
    """
    import pandas as pd

    from mimir.targets.catalog import get_target

    folder = CrossvalFolder(out)
    summary = pd.read_csv(folder.summary)
    calibrated = pd.read_csv(folder.oof_predictions_calibrated)
    uncalibrated = pd.read_csv(folder.oof_predictions)
    reference = pd.read_csv(folder.reference)
    folds = int(json.loads(folder.splits.read_text())["folds"])
    names = list(summary["name"])
    reference_part = reference[["eid", "instance", *names]].rename(columns={n: n + REFERENCE_SUFFIX for n in names})
    uncalibrated_sd = uncalibrated[["eid", "instance", *(sd_column(n) for n in names)]].rename(
        columns={sd_column(n): f"{n}__sd_before" for n in names}
    )
    joined = calibrated.merge(reference_part, on=["eid", "instance"], how="inner").merge(
        uncalibrated_sd, on=["eid", "instance"], how="left"
    )
    figures = folder.figures
    figures.mkdir(parents=True, exist_ok=True)
    curves = PageSection(
        VALIDATION_SECTION,
        "Training and validation loss over checkpoints (all folds)",
        figures=[validation_curve_plot(_histories(folder, folds), path=figures / "validation_curve.png",
                                       title="Gaussian NLL per fold (validation = the held-out fold)")],
    )
    baseline = _baseline_section(summary)
    sections = []
    for row in summary.to_dict(orient="records"):
        name = str(row["name"])
        target = get_target(name)
        unit = target.unit if _missing(row.get("unit")) else str(row.get("unit") or "")
        metrics = {
            key: value for column, key in _SECTION_METRICS.items() if math.isfinite(value := cell_number(row.get(column)))
        }
        title = f"{name} ({unit})" if unit else name
        figure_paths = target_figures(
            name, unit, column_values(joined, name + REFERENCE_SUFFIX), column_values(joined, name),
            column_values(joined, sd_column(name)),
            figures, binary=target.is_binary, sd_before_calibration=column_values(joined, f"{name}__sd_before"),
        )
        module = "" if _missing(row.get("module")) else str(row.get("module") or "")
        sections.append(ReportSection(name, title, figure_paths, metrics, module))
    record = _read_json(folder.record)
    return write_report(
        folder.path,
        title=f"MIMIR cross-validation: {record.get('module', '')}",
        summary_table=summary,
        sections=sections,
        notes=_notes(folder),
        page_sections=[curves, *([baseline] if baseline else []), *extra_sections],
        modules=[from_crossval_record(record, _read_json(folder.data_summary))],
        ours_heading=f"This cross-validation ({folds}-fold)",
    )


def _missing(value: object) -> bool:
    """An absent or NaN cell (text such as a unit is not missing)."""
    return value is None or (isinstance(value, float) and math.isnan(value))
