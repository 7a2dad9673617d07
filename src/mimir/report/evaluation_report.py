"""The evaluation report: predictions against a reference release, one self-contained page."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mimir.evaluation.evaluate import REFERENCE_SUFFIX, column_values
from mimir.inference.table import sd_column
from mimir.report.html import ReportSection, cell_number, write_report
from mimir.report.provenance import ModuleProvenance
from mimir.report.target_figures import target_figures
from mimir.runs.layout import EvaluationFolder

if TYPE_CHECKING:
    import pandas as pd

_SECTION_METRICS = ("n", "icc", "r2", "mae", "bias", "mape_percent", "auc", "auce")


def _optional_column(table: "pd.DataFrame", name: str) -> np.ndarray | None:
    return column_values(table, name) if name in table.columns else None


def write_evaluation_report(
    out: Path,
    predictions: "pd.DataFrame",
    reference: "pd.DataFrame",
    metrics: "pd.DataFrame",
    *,
    title: str = "MIMIR evaluation",
    notes: dict[str, str] | None = None,
    modules: Sequence[ModuleProvenance] = (),
) -> Path:
    """Write `out/report.html` with the metrics table and each target's figures.

    `modules` are the modules that made the predictions (see `provenance.from_module_spec`);
    a predictions table does not record them, so without them the page says so.
    """
    from mimir.evaluation.evaluate import paired_table
    from mimir.targets.catalog import get_target

    out = Path(out)
    targets = [get_target(name) for name in metrics["name"]]
    joined = paired_table(predictions, reference, targets)
    figures = EvaluationFolder(out).figures
    figures.mkdir(parents=True, exist_ok=True)
    sections = []
    for row, target in zip(metrics.to_dict(orient="records"), targets, strict=True):
        paths = target_figures(
            target.name,
            target.unit,
            _optional_column(joined, target.name + REFERENCE_SUFFIX),
            _optional_column(joined, target.name),
            _optional_column(joined, sd_column(target.name)),
            figures,
            binary=target.is_binary,
        )
        numbers = {key: value for key in _SECTION_METRICS if math.isfinite(value := cell_number(row.get(key)))}
        sections.append(ReportSection(target.name, f"{target.name} ({target.unit})", paths, numbers, target.module))
    facts = {"predicted rows": str(len(predictions)), "paired with the reference": str(len(joined))}
    if not modules:
        facts["modules"] = "not recorded with the predictions table"
    return write_report(
        out, title=title, summary_table=metrics, sections=sections, notes={**facts, **(notes or {})}, modules=modules
    )
