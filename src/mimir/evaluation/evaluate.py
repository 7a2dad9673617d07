"""Predictions tables against a reference targets table: one row of metrics per target.

The table puts the published cross-validation numbers of the catalog beside ours, so a
reader sees at once whether a model reproduces the paper.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mimir.atomic import atomic_write_text
from mimir.errors import MimirError
from mimir.evaluation.calibration import apply_variance_scale, auce, fit_variance_scale
from mimir.evaluation.metrics import MetricInputError, agreement_metrics
from mimir.inference.table import COMPONENT_SUFFIXES, SD_SUFFIX, STATISTIC_SUFFIXES, sd_column
from mimir.runs.layout import EvaluationFolder
from mimir.targets.catalog import Target, catalog, ukb_column

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

REFERENCE_SUFFIX = "__reference"
PUBLISHED_COLUMNS = ("cv_n", "cv_icc", "cv_r2", "cv_mae", "cv_mape_percent")
METRIC_COLUMNS = (
    "name", "module", "ukb_field", "unit", "kind", "n", "icc", "r2", "mae", "bias", "mape_percent",
    "auc", "precision", "recall", "auce", "variance_factor", "auce_scaled", *PUBLISHED_COLUMNS,
)


class EvaluationInputError(MimirError, ValueError):
    """Predictions and reference that cannot be compared (no shared ids, missing columns)."""


def _sd_columns(columns: Sequence[str]) -> list[str]:
    """The `{target}_sd` columns of catalog targets among `columns`: what marks a predictions table."""
    present = set(columns)
    return [sd_column(t.name) for t in catalog() if sd_column(t.name) in present]


def with_catalog_names(predictions: "pd.DataFrame") -> "pd.DataFrame":
    """A predictions table written with UK Biobank-style names (`p{field}_i{instance}`, the
    `column_names="ukb"` of `mimir predict`) with its target columns renamed to the catalog's,
    which evaluation looks for; any other table as it is."""
    if "instance" not in predictions.columns:
        return predictions
    instances = set(predictions["instance"].dropna().astype(int))
    if len(instances) != 1:
        return predictions
    instance = instances.pop()
    renames = {}
    for target in catalog():
        column = ukb_column(target.name, target.ukb_field, instance)
        if column != target.name and column in predictions.columns and target.name not in predictions.columns:
            for suffix in (*STATISTIC_SUFFIXES, *COMPONENT_SUFFIXES):
                if column + suffix in predictions.columns:
                    renames[column + suffix] = target.name + suffix
    return predictions.rename(columns=renames) if renames else predictions


def read_predictions_csv(path: Path | str, reference: Path | str | None = None) -> "pd.DataFrame":
    """A predictions CSV to evaluate; a file pandas cannot parse is the user's to fix, not a bug.

    Point predictions without `{target}_sd` columns are evaluated (agreement metrics only). But
    a first table without them while the `reference` file has them is the two arguments
    swapped, which would "evaluate" the reference against the predictions into a report of
    nonsense: refused, saying so.
    """
    import pandas as pd

    try:
        table = with_catalog_names(pd.read_csv(path))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise EvaluationInputError(f"{path}: not a readable CSV table ({error})") from error
    if _sd_columns(table.columns) or reference is None:
        return table
    from mimir.targets.exports import ExportFormatError, read_header

    try:
        reference_columns, _ = read_header(Path(reference))
    except ExportFormatError:
        return table  # the reference's own reader reports what is wrong with it
    found = _sd_columns(reference_columns)
    if found:
        raise EvaluationInputError(
            f"{path} (the first argument, the predictions) has no {{target}}{SD_SUFFIX} column, while "
            f"{reference} (the second argument, the reference) has {', '.join(found[:2])}: the arguments "
            "look swapped; give the predictions first and the reference second"
        )
    logger.warning("%s has no {target}%s columns: point predictions, evaluated without uncertainty metrics", path, SD_SUFFIX)
    return table


def join_keys(predictions: "pd.DataFrame", reference: "pd.DataFrame") -> list[str]:
    """`eid`, plus `instance` when both tables have it."""
    for label, table in (("predictions", predictions), ("reference", reference)):
        if "eid" not in table.columns:
            raise EvaluationInputError(f"the {label} table has no 'eid' column")
    both_have_instance = "instance" in predictions.columns and "instance" in reference.columns
    return ["eid", "instance"] if both_have_instance else ["eid"]


def _require_unique(table: "pd.DataFrame", keys: list[str], label: str) -> None:
    repeated = table.duplicated(subset=keys)
    if repeated.any():
        example = table.loc[repeated, keys].iloc[0].to_dict()
        raise EvaluationInputError(f"the {label} table repeats {'/'.join(keys)} (e.g. {example})")


def _select_targets(
    predictions: "pd.DataFrame", reference: "pd.DataFrame", targets: Sequence[Target] | None
) -> tuple[Target, ...]:
    if targets is None:
        return tuple(t for t in catalog() if t.name in predictions.columns and t.name in reference.columns)
    chosen = tuple(targets)
    for target in chosen:
        for label, table in (("predictions", predictions), ("reference", reference)):
            if target.name not in table.columns:
                raise EvaluationInputError(f"target {target.name!r} has no column in the {label} table")
    return chosen


def paired_table(
    predictions: "pd.DataFrame", reference: "pd.DataFrame", targets: Sequence[Target]
) -> "pd.DataFrame":
    """Predictions with each target's reference as `{name}{REFERENCE_SUFFIX}`, joined on the keys."""
    keys = join_keys(predictions, reference)
    _require_unique(reference, keys, "reference")
    _require_unique(predictions, keys, "predictions")
    reference_part = reference[keys + [t.name for t in targets]].rename(
        columns={t.name: t.name + REFERENCE_SUFFIX for t in targets}
    )
    joined = predictions.merge(reference_part, on=keys, how="inner", validate="one_to_one")
    if joined.empty:
        raise EvaluationInputError(
            f"predictions and reference share no {'/'.join(keys)}"
            + (" (check that both are of the same imaging instance)" if "instance" in keys else "")
        )
    logger.info("matched %d of %d predicted rows to the reference", len(joined), len(predictions))
    return joined


def column_values(table: "pd.DataFrame", name: str) -> np.ndarray:
    """A column as float64 with missing values as NaN (the form every metric takes)."""
    return table[name].to_numpy(dtype=np.float64, na_value=np.nan)


def _uncertainty_metrics(mean: np.ndarray, sd: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    factor = fit_variance_scale(mean, sd, reference)
    scaled = (
        auce(mean, apply_variance_scale(sd, factor), reference)
        if math.isfinite(factor) and factor > 0
        else math.nan
    )
    return {"auce": auce(mean, sd, reference), "variance_factor": factor, "auce_scaled": scaled}


def evaluate_target(joined: "pd.DataFrame", target: Target) -> dict[str, object]:
    """One metrics row for a target of a joined table (see `paired_table`)."""
    mean = column_values(joined, target.name)
    reference = column_values(joined, target.name + REFERENCE_SUFFIX)
    try:
        metrics = agreement_metrics(mean, reference, binary=target.is_binary)
    except MetricInputError as error:
        logger.warning("%s: %s; its AUC, precision and recall are left empty", target.name, error)
        metrics = replace(agreement_metrics(mean, reference), mape_percent=math.nan)
    row: dict[str, object] = {
        "name": target.name,
        "module": target.module,
        "ukb_field": target.ukb_field,
        "unit": target.unit,
        "kind": target.kind,
        "n": metrics.n,
        "icc": metrics.icc,
        "r2": metrics.r2,
        "mae": metrics.mae,
        "bias": metrics.bias,
        "mape_percent": metrics.mape_percent,
        "auc": metrics.auc,
        "precision": metrics.precision,
        "recall": metrics.recall,
        "auce": math.nan,
        "variance_factor": math.nan,
        "auce_scaled": math.nan,
    }
    sd = sd_column(target.name)
    if sd in joined.columns and not target.is_binary:  # a probability has no normal interval
        row.update(_uncertainty_metrics(mean, column_values(joined, sd), reference))
    row.update({column: target.published[column] for column in PUBLISHED_COLUMNS})
    return row


def evaluate_predictions(
    predictions: "pd.DataFrame", reference: "pd.DataFrame", targets: Sequence[Target] | None = None
) -> "pd.DataFrame":
    """Metrics per target: ours (n, ICC, R2, MAE, MAPE, binary AUC/precision/recall, AUCE) and
    the paper's cv_* values beside them. Binary targets have no MAPE and no AUCE (their
    prediction is a probability, not a normal interval).

    Rows are joined on eid (and instance when both tables have it). Without `targets`, every
    catalog target with a column in both tables is evaluated; predictions with UK Biobank-style
    column names are read by their catalog names (`with_catalog_names`). `variance_factor` is the
    NLL-optimal variance scale fitted on these very rows and `auce_scaled` the AUCE after
    applying it: in-sample, so an optimistic view unless the rows are out-of-fold.
    """
    import pandas as pd

    predictions = with_catalog_names(predictions)
    chosen = _select_targets(predictions, reference, targets)
    if not chosen:
        raise EvaluationInputError("no catalog target has a column in both the predictions and the reference")
    joined = paired_table(predictions, reference, chosen)
    rows = [evaluate_target(joined, target) for target in chosen]
    table = pd.DataFrame.from_records(rows, columns=list(METRIC_COLUMNS))
    table["ukb_field"] = table["ukb_field"].astype("Int64")
    return table


def fit_calibration_factors(
    predictions: "pd.DataFrame", reference: "pd.DataFrame", targets: Sequence[Target] | None = None
) -> dict[str, float]:
    """Variance scale factor per target with a `{name}_sd` column (NLL optimum; see calibration)."""
    chosen = tuple(
        t for t in (targets or catalog()) if sd_column(t.name) in predictions.columns and t.name in reference.columns
    )
    if not chosen:
        return {}
    joined = paired_table(predictions, reference, chosen)
    return {
        t.name: fit_variance_scale(
            column_values(joined, t.name), column_values(joined, sd_column(t.name)), column_values(joined, t.name + REFERENCE_SUFFIX)
        )
        for t in chosen
    }


def apply_calibration_factors(predictions: "pd.DataFrame", factors: Mapping[str, float]) -> "pd.DataFrame":
    """A copy with each `{name}_sd` rescaled so that its variance is multiplied by the factor."""
    calibrated = predictions.copy()
    for name, factor in factors.items():
        column = sd_column(name)
        if column not in calibrated.columns:
            raise EvaluationInputError(f"no column {column!r} to calibrate")
        calibrated[column] = apply_variance_scale(column_values(calibrated, column), factor)
    return calibrated


def _format_number(value: object) -> str:
    import pandas as pd

    if value is None or pd.isna(value):
        return ""
    if isinstance(value, (int, np.integer)):
        return str(value)
    return f"{float(value):.3f}"


def metrics_markdown(metrics: "pd.DataFrame") -> str:
    """A short Markdown table of the headline numbers, ours beside the paper's."""
    header = ("target", "unit", "N", "ICC", "R2", "MAE", "bias", "MAPE %", "AUC", "AUCE", "paper ICC", "paper MAE")
    columns = ("name", "unit", "n", "icc", "r2", "mae", "bias", "mape_percent", "auc", "auce", "cv_icc", "cv_mae")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for record in metrics.to_dict(orient="records"):
        cells = [str(record[c]) if c in ("name", "unit") else _format_number(record[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_metrics(metrics: "pd.DataFrame", out_dir: Path | str) -> tuple[Path, Path]:
    """`metrics.csv` and `metrics.md` in `out_dir`, each written atomically."""
    folder = EvaluationFolder(out_dir)
    csv_path, markdown_path = folder.metrics, folder.metrics_markdown
    atomic_write_text(csv_path, metrics.to_csv(index=False))
    atomic_write_text(markdown_path, metrics_markdown(metrics))
    return csv_path, markdown_path
