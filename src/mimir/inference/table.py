"""The predictions table: its columns, the wide and long forms, and reading and writing it.

One row per exam (subject and visit), whatever happened to it: per target the calibrated mean,
sd and 95 % interval, then the compression QC flag, the failure (stage: reason) of an exam that
has no predictions, and the targets whose sd is unusually large. The targets' module, unit and
kind travel in `table.attrs["targets"]` (lost in CSV, recovered from the catalog).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mimir.atomic import (
    UnwritableError,
    atomic_path,
    atomic_write_text,
    check_can_create,
    reported_write,
)
from mimir.errors import MimirError
from mimir.imaging.cache import ExamId

if TYPE_CHECKING:
    import pandas as pd

    from mimir.inference.modules import ModuleSpec

logger = logging.getLogger(__name__)

#: Two-sided 95 % normal quantile: interval = mean +- Z95 * sd.
Z95 = 1.959963984540054
OUTPUT_SUFFIXES = (".csv", ".parquet")
ID_COLUMNS = ("eid", "instance", "exam")
STATUS_COLUMNS = ("qc_flag", "failure", "uncertain")
LONG_COLUMNS = (
    "eid", "instance", "exam", "module", "target", "unit", "mean", "sd", "low", "high", "uncertain", "qc_flag", "failure",
)
PARQUET_HINT = "pip install 'mimir-ukb[parquet]'"


class PredictionTableError(MimirError, ValueError):
    """A predictions table cannot be written where asked, or lacks what was looked up in it."""


class OutputPathError(PredictionTableError):
    """The output file cannot be written (checked before any work is done)."""


class ParquetUnavailableError(OutputPathError):
    """Parquet output asked for, but pyarrow is not installed."""


@dataclass
class ExamRow:
    """One exam's row before its predictions: its image once cached, or why it has none."""

    stem: str
    image: Path | None
    failure: str = ""
    qc_flag: str = ""


def build_table(
    rows: Sequence[ExamRow],
    specs: Sequence[ModuleSpec],
    means: Sequence[np.ndarray],
    sds: Sequence[np.ndarray],
    flags: Sequence[np.ndarray],
) -> pd.DataFrame:
    """The wide table: per module (spec), its (rows, targets) means, sds and uncertain flags."""
    import pandas as pd

    ids = [ExamId.from_stem(row.stem) for row in rows]
    columns: dict[str, Any] = {
        "eid": pd.array([exam.eid for exam in ids], dtype="Int64"),
        "instance": pd.array([exam.instance for exam in ids], dtype="Int64"),
        "exam": [row.stem for row in rows],
    }
    uncertain: list[list[str]] = [[] for _ in rows]
    targets = []
    for spec, mean, sd, flag in zip(specs, means, sds, flags, strict=True):
        for column, target in enumerate(spec.targets):
            columns[target.name] = mean[:, column]
            columns[f"{target.name}_sd"] = sd[:, column]
            columns[f"{target.name}_low"] = mean[:, column] - Z95 * sd[:, column]
            columns[f"{target.name}_high"] = mean[:, column] + Z95 * sd[:, column]
            targets.append({"name": target.name, "module": spec.name, "unit": target.unit, "kind": target.kind})
            for position in np.flatnonzero(flag[:, column]):
                uncertain[position].append(target.name)
    columns["qc_flag"] = [row.qc_flag for row in rows]
    columns["failure"] = [row.failure for row in rows]
    columns["uncertain"] = [";".join(names) for names in uncertain]
    table = pd.DataFrame(columns)
    table.attrs["targets"] = targets
    return table


def check_output_path(out: str | Path) -> Path:
    """Fail before any work when `out` cannot be written: suffix, folder, permissions, pyarrow."""
    out = Path(out)
    if out.is_dir():
        raise OutputPathError(f"{out} is a folder; give a file name")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise OutputPathError(f"{out}: the output must end in {' or '.join(OUTPUT_SUFFIXES)}")
    try:
        check_can_create(out)
    except UnwritableError as error:
        raise OutputPathError(str(error)) from error
    if out.exists() and not os.access(out, os.W_OK):
        raise OutputPathError(f"{out} exists and is read-only")
    if out.suffix.lower() == ".parquet":
        require_parquet()
    return out


def require_parquet() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError as error:
        raise ParquetUnavailableError(f"Parquet output needs pyarrow: {PARQUET_HINT}") from error


def target_info(table: pd.DataFrame) -> list[dict[str, str]]:
    """Name, module and unit of each target column: from the table's attrs, else the catalog."""
    recorded = table.attrs.get("targets")
    if recorded:
        return [dict(item) for item in recorded]
    from mimir.targets.catalog import get_target

    info = []
    for column in table.columns:
        if not {f"{column}_sd", f"{column}_low", f"{column}_high"} <= set(table.columns):
            continue
        try:
            known = get_target(str(column))
            info.append({"name": str(column), "module": known.module, "unit": known.unit, "kind": known.kind})
        except KeyError:
            info.append({"name": str(column), "module": "", "unit": "", "kind": "continuous"})
    return info


def to_long(table: pd.DataFrame) -> pd.DataFrame:
    """One row per exam and target (the wide table melted, module and unit attached)."""
    import pandas as pd

    targets = target_info(table)
    n_rows, n_targets = len(table), len(targets)
    uncertain = [set(filter(None, str(text).split(";"))) for text in table["uncertain"].fillna("")]

    def repeated(column: str) -> np.ndarray:
        return np.repeat(table[column].to_numpy(), n_targets)

    def per_target(suffix: str) -> np.ndarray:
        if not targets:
            return np.zeros(0)
        return np.column_stack([table[f"{t['name']}{suffix}"].to_numpy(dtype=np.float64) for t in targets]).ravel()

    long = pd.DataFrame({
        "eid": pd.array(repeated("eid"), dtype="Int64"),
        "instance": pd.array(repeated("instance"), dtype="Int64"),
        "exam": repeated("exam"),
        "module": np.tile([t["module"] for t in targets], n_rows),
        "target": np.tile([t["name"] for t in targets], n_rows),
        "unit": np.tile([t["unit"] for t in targets], n_rows),
        "mean": per_target(""),
        "sd": per_target("_sd"),
        "low": per_target("_low"),
        "high": per_target("_high"),
        "uncertain": [t["name"] in flagged for flagged in uncertain for t in targets],
        "qc_flag": repeated("qc_flag"),
        "failure": repeated("failure"),
    })
    return long[list(LONG_COLUMNS)]


def write_predictions(table: pd.DataFrame, out: str | Path, *, long: bool = False) -> Path:
    """Write the table as CSV or Parquet (by suffix), atomically: all of it or nothing."""
    out = check_output_path(out)
    written = to_long(table) if long else table
    with reported_write(out, "nothing was written there; compressed images stay in their cache, so a rerun does not compress again"):
        if out.suffix.lower() == ".parquet":
            with atomic_path(out) as temporary:
                written.to_parquet(temporary, index=False)
        else:
            atomic_write_text(out, written.to_csv(index=False, float_format="%.7g", lineterminator="\n"))
    logger.info("wrote %d rows to %s", len(written), out)
    return out


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A table written by `write_predictions` (wide), keeping exam names and flags as text."""
    import pandas as pd

    path = Path(path)
    if path.suffix.lower() == ".parquet":
        require_parquet()
        return pd.read_parquet(path)
    text_columns = {"exam": str, "qc_flag": str, "failure": str, "uncertain": str}
    table = pd.read_csv(path, dtype=text_columns)
    for column in text_columns:
        if column in table:
            table[column] = table[column].fillna("")
    return table


def subject_predictions(table: pd.DataFrame, exam: str) -> pd.DataFrame:
    """The rows `report.figure.subject_figure` lists for one exam: name, module, unit, mean, low, high."""
    import pandas as pd

    matches = table[table["exam"].astype(str) == exam]
    if matches.empty:
        raise PredictionTableError(f"exam {exam!r} is not in the predictions table")
    row = matches.iloc[0]
    return pd.DataFrame([
        {
            "name": info["name"], "module": info["module"], "unit": info["unit"],
            "mean": row[info["name"]], "low": row[f"{info['name']}_low"], "high": row[f"{info['name']}_high"],
        }
        for info in target_info(table)
    ], columns=["name", "module", "unit", "mean", "low", "high"])


def default_cache_for(out: str | Path) -> Path:
    """The cache used when none is named: `{output stem}_cache` beside the output."""
    out = Path(out)
    return out.with_name(f"{out.stem}_cache")


__all__ = [
    "LONG_COLUMNS",
    "Z95",
    "ExamRow",
    "OutputPathError",
    "ParquetUnavailableError",
    "PredictionTableError",
    "build_table",
    "check_output_path",
    "default_cache_for",
    "read_predictions",
    "require_parquet",
    "subject_predictions",
    "target_info",
    "to_long",
    "write_predictions",
]
