"""The predictions table: its columns, the wide and long forms, and reading and writing it.

One row per exam (subject and visit), whatever happened to it: per target the calibrated mean,
sd and 95 % interval (as `mimir.inference.postprocess.reported_values` bounds them: at 0 for
quantities that cannot be negative; a binary target's probability has no sd or interval), for
a target of an ensemble module (several member networks) also the two parts of its sd,
`{target}_sd_aleatoric` and `{target}_sd_epistemic` (the columns of one-network modules are
unchanged), then
the compression QC flag, the failure (stage: reason) of an exam that has no predictions, and the
targets flagged as uncertain. The targets' module, unit, kind, field and column travel in
`table.attrs["targets"]` (lost in CSV, recovered from the catalog).

Columns are named after the catalog (`AtlasVatVolume`, `AtlasVatVolume_sd`, ...) or, with
`column_names="ukb"`, as the Research Analysis Platform names UK Biobank fields
(`p22407_i2`, `p22407_i2_sd`, ...; targets without a field keep their name). Written tables
are rounded per unit (`mimir.targets.catalog.unit_decimals`) and get a JSON data dictionary
beside them (`{stem}_dictionary.json`), written with the table: both or neither.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mimir.atomic import (
    UnwritableError,
    atomic_path,
    check_can_create,
    reported_write,
)
from mimir.errors import MimirError
from mimir.imaging.cache import ExamId
from mimir.inference.postprocess import Z95, reported_values, uncertain_flags
from mimir.targets.catalog import (
    INTERVAL_BOUNDED,
    INTERVAL_PROBABILITY,
    PROBABILITY_DECIMALS,
    UNKNOWN_UNIT_SIGNIFICANT_DIGITS,
    interval_kind,
    ukb_column,
    unit_decimals,
)

if TYPE_CHECKING:
    import pandas as pd

    from mimir.inference.modules import ModuleSpec

logger = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".csv", ".parquet")
ID_COLUMNS = ("eid", "instance", "exam")
STATUS_COLUMNS = ("qc_flag", "failure", "uncertain")
#: Columns only tables predicted with a module that has an OOD description carry (docs/ood.md).
OOD_COLUMNS = ("ood_score", "ood_flag")
OOD_SCORE_DECIMALS = 1
LONG_COLUMNS = (
    "eid", "instance", "exam", "module", "target", "unit", "mean", "sd", "low", "high", "uncertain", "qc_flag", "failure",
)
PARQUET_HINT = "pip install 'mimir-ukb[parquet]'"
#: Column naming: the catalog's names, or the Research Analysis Platform's `p{field}_i{instance}`.
COLUMN_NAMINGS = ("mimir", "ukb")
#: A target's columns are its name (the mean) plus these suffixes; every table of predictions
#: (out-of-fold ones included) and every reader of one takes them from here.
SD_SUFFIX = "_sd"
LOW_SUFFIX = "_low"
HIGH_SUFFIX = "_high"
#: Per target: suffix of its column -> what the column holds (the mean's column has no suffix).
STATISTIC_SUFFIXES = {"": "mean", SD_SUFFIX: "sd", LOW_SUFFIX: "low", HIGH_SUFFIX: "high"}
#: Per target of an ensemble module only: suffix -> the part of the sd the column holds.
COMPONENT_SUFFIXES = {f"{SD_SUFFIX}_aleatoric": "aleatoric", f"{SD_SUFFIX}_epistemic": "epistemic"}
DICTIONARY_SUFFIX = "_dictionary.json"
_RAP_COLUMN = re.compile(r"^p(?P<field>\d+)_i(?P<instance>\d+)$")


class PredictionTableError(MimirError, ValueError):
    """A predictions table cannot be written where asked, or lacks what was looked up in it."""


class OutputPathError(PredictionTableError):
    """The output file cannot be written (checked before any work is done)."""


class ParquetUnavailableError(OutputPathError):
    """Parquet output asked for, but pyarrow is not installed."""


class ColumnNamingError(PredictionTableError):
    """UK Biobank-style column names asked for exams that do not share one UK Biobank instance."""


@dataclass
class ExamRow:
    """One exam's row before its predictions: its image once cached, or why it has none."""

    stem: str
    image: Path | None
    failure: str = ""
    qc_flag: str = ""


def sd_column(target: str) -> str:
    """The column of `target`'s sd (calibrated in a predictions table; as trained in raw
    out-of-fold predictions)."""
    return target + SD_SUFFIX


def check_column_naming(naming: str) -> str:
    """`naming` when it is one of COLUMN_NAMINGS (checked before any work, as the API takes text)."""
    if naming not in COLUMN_NAMINGS:
        raise ColumnNamingError(f"column names must be one of {', '.join(COLUMN_NAMINGS)}, got {naming!r}")
    return naming


def table_instance(stems: Sequence[str]) -> int:
    """The one UK Biobank instance of these exams, which UK Biobank-style column names carry.

    Checked before any work: exams of two visits (or with names that give no visit) would need
    two names for one column, so they are refused, saying how to split them.
    """
    ids = [ExamId.from_stem(stem) for stem in stems]
    unnamed = [exam.stem for exam in ids if exam.instance is None]
    if unnamed:
        raise ColumnNamingError(
            f"UK Biobank column names (p{{field}}_i{{instance}}) need exams named as UK Biobank names them "
            f"({{eid}}_20201_{{instance}}_{{array}}); {len(unnamed)} are not, e.g. {unnamed[0]!r}: use the default column names"
        )
    instances = sorted({exam.instance for exam in ids if exam.instance is not None})
    if len(instances) > 1:
        raise ColumnNamingError(
            f"UK Biobank column names (p{{field}}_i{{instance}}) name one instance per table, and these exams are of "
            f"instances {', '.join(map(str, instances))}: predict each instance into its own table"
        )
    if not instances:
        raise ColumnNamingError("UK Biobank column names need at least one exam to take the instance from")
    return instances[0]


def build_table(
    rows: Sequence[ExamRow],
    specs: Sequence[ModuleSpec],
    means: Sequence[np.ndarray],
    sds: Sequence[np.ndarray],
    *,
    column_names: str = "mimir",
    components: Sequence[tuple[np.ndarray, np.ndarray] | None] | None = None,
    ood: Sequence[tuple[str, np.ndarray, np.ndarray]] = (),
) -> pd.DataFrame:
    """The wide table: per module (spec), its (rows, targets) calibrated means and sds as a reader
    gets them (`reported_values`), and the targets flagged uncertain (`uncertain_flags`).

    `components` gives, per module, None or its (aleatoric, epistemic) sds (an ensemble): those
    add `{target}_sd_aleatoric` and `{target}_sd_epistemic` after the target's interval (empty
    where its sd is, e.g. for a probability).

    `ood` holds (module, score, flagged) per module with an OOD description; when there is any,
    the table ends with `ood_score` (the highest module score, 0-100) and `ood_flag` (the modules
    that flag the exam as out of distribution, ';'-separated). Without, the columns are absent."""
    import pandas as pd

    check_column_naming(column_names)
    instance = table_instance([row.stem for row in rows]) if column_names == "ukb" else None
    ids = [ExamId.from_stem(row.stem) for row in rows]
    columns: dict[str, Any] = {
        "eid": pd.array([exam.eid for exam in ids], dtype="Int64"),
        "instance": pd.array([exam.instance for exam in ids], dtype="Int64"),
        "exam": [row.stem for row in rows],
    }
    uncertain: list[list[str]] = [[] for _ in rows]
    targets = []
    parts = list(components) if components is not None else [None] * len(specs)
    for spec, mean, sd, part in zip(specs, means, sds, parts, strict=True):
        values = reported_values(mean, sd, spec)
        flags = uncertain_flags(mean, sd, spec)
        for position, target in enumerate(spec.targets):
            name = target.name if instance is None else ukb_column(target.name, target.ukb_field, instance)
            for suffix, statistic in STATISTIC_SUFFIXES.items():
                columns[f"{name}{suffix}"] = getattr(values, statistic)[:, position]
            if part is not None:
                shown = np.isfinite(values.sd[:, position])
                for suffix, component in zip(COMPONENT_SUFFIXES, part, strict=True):
                    columns[f"{name}{suffix}"] = np.where(shown, component[:, position], np.nan)
            targets.append({
                "name": target.name, "column": name, "module": spec.name, "unit": target.unit,
                "kind": target.kind, "ukb_field": target.ukb_field, "interval": interval_kind(target.kind, target.unit),
                **({"sd_components": True} if part is not None else {}),
            })
            for row in np.flatnonzero(flags[:, position]):
                uncertain[row].append(name)
    columns["qc_flag"] = [row.qc_flag for row in rows]
    columns["failure"] = [row.failure for row in rows]
    columns["uncertain"] = [";".join(names) for names in uncertain]
    if ood:
        columns.update(ood_columns(ood, len(rows)))
    table = pd.DataFrame(columns)
    table.attrs["targets"] = targets
    return table


def ood_columns(ood: Sequence[tuple[str, np.ndarray, np.ndarray]], n_rows: int) -> dict[str, Any]:
    """`ood_score`: the highest score of the modules (NaN where none scored the exam); `ood_flag`:
    the modules whose threshold the exam exceeds."""
    scores = np.column_stack([np.asarray(score, dtype=np.float64) for _, score, _ in ood])
    highest = np.where(np.isnan(scores), -np.inf, scores).max(axis=1)
    best = np.where(np.isinf(highest), np.nan, highest)
    flags = [";".join(name for name, _, flagged in ood if bool(flagged[row])) for row in range(n_rows)]
    return {"ood_score": best, "ood_flag": flags}


def check_output_path(out: str | Path) -> Path:
    """Fail before any work when `out` cannot be written: suffix, folder, permissions, pyarrow."""
    out = Path(out)
    if out.is_dir():
        raise OutputPathError(f"{out} is a folder; give a file name")
    if dictionary_path(out).is_dir():
        raise OutputPathError(f"{dictionary_path(out)}, where the table's data dictionary goes, is a folder")
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


def target_info(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Name, column, module, unit, kind, field and interval kind of each target: from the table's
    attrs, else from the catalog (by name, or by field for `p{field}_i{instance}` columns)."""
    recorded = table.attrs.get("targets")
    if recorded:
        return [dict(item) for item in recorded]
    from mimir.targets.catalog import catalog

    by_name = {target.name: target for target in catalog()}
    by_field = {target.ukb_field: target for target in catalog() if target.ukb_field is not None}
    info = []
    for column in map(str, table.columns):
        if not {f"{column}{suffix}" for suffix in STATISTIC_SUFFIXES} <= set(table.columns):
            continue
        rap = _RAP_COLUMN.match(column)
        known = by_name.get(column) or (by_field.get(int(rap["field"])) if rap else None)
        if known is None:
            info.append({"name": column, "column": column, "module": "", "unit": "", "kind": "continuous",
                         "ukb_field": None, "interval": interval_kind("continuous", "")})
        else:
            info.append({"name": known.name, "column": column, "module": known.module, "unit": known.unit,
                         "kind": known.kind, "ukb_field": known.ukb_field, "interval": known.interval})
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
        return np.column_stack([table[f"{t['column']}{suffix}"].to_numpy(dtype=np.float64) for t in targets]).ravel()

    extra = {column: repeated(column) for column in OOD_COLUMNS if column in table.columns}
    long = pd.DataFrame({
        "eid": pd.array(repeated("eid"), dtype="Int64"),
        "instance": pd.array(repeated("instance"), dtype="Int64"),
        "exam": repeated("exam"),
        "module": np.tile([t["module"] for t in targets], n_rows),
        "target": np.tile([t["column"] for t in targets], n_rows),
        "unit": np.tile([t["unit"] for t in targets], n_rows),
        "mean": per_target(""),
        "sd": per_target(SD_SUFFIX),
        "low": per_target(LOW_SUFFIX),
        "high": per_target(HIGH_SUFFIX),
        "uncertain": [t["column"] in flagged for flagged in uncertain for t in targets],
        "qc_flag": repeated("qc_flag"),
        "failure": repeated("failure"),
        **extra,
    })
    return long[[*LONG_COLUMNS, *extra]]


def value_decimals(info: dict[str, Any]) -> int | None:
    """Decimals a target's values are written with; None: UNKNOWN_UNIT_SIGNIFICANT_DIGITS
    significant digits (a unit without a published error to size the step on)."""
    if info["interval"] == INTERVAL_PROBABILITY:
        return PROBABILITY_DECIMALS
    return unit_decimals(str(info["unit"]))


def _round(values: np.ndarray, decimals: int | None) -> np.ndarray:
    if decimals is not None:
        return np.round(values, decimals)
    return np.array([float(f"{value:.{UNKNOWN_UNIT_SIGNIFICANT_DIGITS}g}") for value in values], dtype=np.float64)


def rounded(table: pd.DataFrame) -> pd.DataFrame:
    """A copy with every target's mean, sd and bounds rounded alike (`value_decimals`): a
    unit's step is a tenth of the smallest published error in that unit or finer."""
    copy = table.copy()
    for info in target_info(table):
        decimals = value_decimals(info)
        for suffix in (*STATISTIC_SUFFIXES, *COMPONENT_SUFFIXES):
            column = f"{info['column']}{suffix}"
            if suffix in COMPONENT_SUFFIXES and column not in table.columns:
                continue
            copy[column] = _round(table[column].to_numpy(dtype=np.float64), decimals)
    if "ood_score" in copy.columns:
        copy["ood_score"] = np.round(table["ood_score"].to_numpy(dtype=np.float64), OOD_SCORE_DECIMALS)
    return copy


def dictionary_path(out: str | Path) -> Path:
    """Where the data dictionary of the table `out` is written: `{stem}_dictionary.json` beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}{DICTIONARY_SUFFIX}")


_ID_DESCRIPTIONS = {
    "eid": ("identifier", "UK Biobank participant id, from the exam's file name (empty when the name is not a UK Biobank one)"),
    "instance": ("identifier", "UK Biobank instance (visit) of the exam: 2 first imaging visit, 3 repeat imaging visit"),
    "exam": ("identifier", "the exam's name: {eid}_20201_{instance}_{array} for UK Biobank zips, else the input's name"),
    "qc_flag": ("text", "compression quality flags of the exam (';'-separated; empty: none); see `mimir compress`"),
    "failure": ("text", "why the exam has no predictions ('stage: reason'); empty when it was predicted"),
    "ood_score": ("number", "how unusual the image is for the modules' training images: the percentage of "
                  "training exams at or closer to them in feature space (0-100; the highest over the modules "
                  "with an OOD description); docs/ood.md"),
    "ood_flag": ("text", "the modules that flag the exam as out of distribution (beyond the threshold their "
                 "module records; ';'-separated; empty: none); docs/ood.md"),
}
_LONG_DESCRIPTIONS = {
    "module": ("text", "the module (network) that predicted the target"),
    "target": ("text", "the target's column name in the wide table (see `targets`)"),
    "unit": ("text", "the target's unit (see `targets`)"),
    "mean": ("number", "the prediction: calibrated mean, or the probability of a binary target (see `targets`)"),
    "sd": ("number", "calibrated standard deviation of the prediction; empty for a binary target"),
    "low": ("number", "lower end of the 95 % interval; empty for a binary target"),
    "high": ("number", "upper end of the 95 % interval; empty for a binary target"),
    "uncertain": ("boolean", "whether the prediction is flagged as uncertain (docs/intervals.md)"),
}


_COMPONENT_DESCRIPTIONS = {
    "aleatoric": "{name}: the part of the sd the member networks predict themselves (their mean variance), calibrated",
    "epistemic": "{name}: the part of the sd from the member networks' disagreement (variance of their means), calibrated",
}


def _statistic_description(info: dict[str, Any], statistic: str) -> str:
    name, unit, interval = info["name"], info["unit"], info["interval"]
    if interval == INTERVAL_PROBABILITY:
        if statistic == "mean":
            return f"{name}: probability that it is 1 ({unit}), the network's calibrated mean clipped to [0, 1]"
        return f"{name}: empty, a probability has no {'sd' if statistic == 'sd' else 'interval'}"
    bounded = ", bounded at 0" if interval == INTERVAL_BOUNDED else ""
    return {
        "mean": f"{name}: predicted value, the calibrated mean{bounded}",
        "sd": f"{name}: standard deviation of the prediction, calibrated on cross-validation",
        "low": f"{name}: lower end of the 95 % interval, mean - {Z95:.2f} sd{bounded}",
        "high": f"{name}: upper end of the 95 % interval, mean + {Z95:.2f} sd{bounded}",
    }[statistic]


def _target_entry(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "target": info["name"], "column": info["column"], "module": info["module"], "unit": info["unit"],
        "ukb_field": info["ukb_field"], "kind": info["kind"], "interval": info["interval"],
        "decimals": value_decimals(info),
    }


def data_dictionary(table: pd.DataFrame, *, long: bool = False, part: str | None = None) -> dict[str, Any]:
    """What each column of the written table holds: name, unit, UK Biobank field, kind and
    description, in the table's column order, plus each target's interval kind and rounding;
    `part` ("K/N") for the table of one part of a split prediction (`mimir.inference.merge`)."""
    from mimir import __version__

    targets = target_info(table)
    columns: list[dict[str, Any]] = []

    def add(column: str, kind: str, description: str, unit: str = "", field: int | None = None) -> None:
        columns.append({"column": column, "unit": unit, "ukb_field": field, "kind": kind, "description": description})

    for column in ID_COLUMNS:
        add(column, *_ID_DESCRIPTIONS[column])
    if long:
        for column in LONG_COLUMNS[len(ID_COLUMNS):]:
            add(column, *(_LONG_DESCRIPTIONS.get(column) or _ID_DESCRIPTIONS[column]))
    else:
        for info in targets:
            for suffix, statistic in STATISTIC_SUFFIXES.items():
                kind = "probability" if info["interval"] == INTERVAL_PROBABILITY and statistic == "mean" else statistic
                add(f"{info['column']}{suffix}", kind, _statistic_description(info, statistic), info["unit"], info["ukb_field"])
            for suffix, component in COMPONENT_SUFFIXES.items():
                if f"{info['column']}{suffix}" in table.columns:
                    add(f"{info['column']}{suffix}", f"sd_{component}", _COMPONENT_DESCRIPTIONS[component].format(name=info["name"]),
                        info["unit"], info["ukb_field"])
        add("qc_flag", *_ID_DESCRIPTIONS["qc_flag"])
        add("failure", *_ID_DESCRIPTIONS["failure"])
        add("uncertain", "text", "the target columns whose prediction is flagged as uncertain (';'-separated; docs/intervals.md)")
    for column in OOD_COLUMNS:
        if column in table.columns:
            add(column, *_ID_DESCRIPTIONS[column])
    part_entry = {} if part is None else {"part": part}
    return {
        "mimir_version": __version__,
        **part_entry,
        "form": "long" if long else "wide",
        "interval": "95 % interval of the calibrated normal prediction; see docs/intervals.md",
        "rounding": (
            "per unit, a step of at most a tenth of the smallest published cross-validation MAE in that unit "
            f"(`decimals` per target); probabilities {PROBABILITY_DECIMALS} decimals; units without a published "
            f"error {UNKNOWN_UNIT_SIGNIFICANT_DIGITS} significant digits"
        ),
        "columns": columns,
        "targets": [_target_entry(info) for info in targets],
    }


def write_predictions(table: pd.DataFrame, out: str | Path, *, long: bool = False, part: str | None = None) -> Path:
    """Write the table (rounded) as CSV or Parquet by suffix, and its data dictionary beside it,
    atomically: both files complete, or neither changed. `part`: see `data_dictionary`."""
    out = check_output_path(out)
    dictionary = data_dictionary(table, long=long, part=part)
    written = rounded(table)
    written = to_long(written) if long else written
    write_table_files(
        written, dictionary, out,
        "nothing was written there; compressed images stay in their cache, so a rerun does not compress again",
    )
    logger.info("wrote %d rows to %s and its data dictionary to %s", len(written), out, dictionary_path(out))
    return out


def write_table_files(table: pd.DataFrame, dictionary: dict[str, Any], out: Path, left_as_it_was: str) -> None:
    """`table` as CSV or Parquet by `out`'s suffix, and its data dictionary beside it: both files
    complete, or neither changed. `left_as_it_was` ends the message of a write that failed."""
    text = json.dumps(dictionary, indent=1, allow_nan=False) + "\n"
    with reported_write(out, left_as_it_was):
        with atomic_path(dictionary_path(out)) as dictionary_file, atomic_path(out) as table_file:
            dictionary_file.write_text(text, encoding="utf-8")
            if out.suffix.lower() == ".parquet":
                table.to_parquet(table_file, index=False)
            else:
                table_file.write_text(table.to_csv(index=False, lineterminator="\n"), encoding="utf-8")


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A table written by `write_predictions` (wide), keeping exam names and flags as text."""
    import pandas as pd

    path = Path(path)
    if path.suffix.lower() == ".parquet":
        require_parquet()
        return pd.read_parquet(path)
    text_columns = {"exam": str, "qc_flag": str, "failure": str, "uncertain": str, "ood_flag": str}
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
            "mean": row[info["column"]], "low": row[f"{info['column']}_low"], "high": row[f"{info['column']}_high"],
        }
        for info in target_info(table)
    ], columns=["name", "module", "unit", "mean", "low", "high"])


def ood_note(table: pd.DataFrame, exam: str) -> str:
    """What a figure says of an exam's OOD columns: '' when the table has none."""
    if "ood_flag" not in table.columns:
        return ""
    row = table[table["exam"].astype(str) == exam].iloc[0]
    flag = row["ood_flag"] if isinstance(row["ood_flag"], str) else ""
    score = float(row["ood_score"])
    score_text = "n/a" if np.isnan(score) else f"{score:.1f}"
    if flag:
        return f"OUT OF DISTRIBUTION for {flag.replace(';', ', ')} (OOD score {score_text})"
    return f"OOD score {score_text}"


def default_cache_for(out: str | Path) -> Path:
    """The cache used when none is named: `{output stem}_cache` beside the output."""
    out = Path(out)
    return out.with_name(f"{out.stem}_cache")


__all__ = [
    "COLUMN_NAMINGS",
    "COMPONENT_SUFFIXES",
    "HIGH_SUFFIX",
    "LONG_COLUMNS",
    "LOW_SUFFIX",
    "OOD_COLUMNS",
    "SD_SUFFIX",
    "STATISTIC_SUFFIXES",
    "Z95",
    "ColumnNamingError",
    "ExamRow",
    "OutputPathError",
    "ParquetUnavailableError",
    "PredictionTableError",
    "build_table",
    "check_column_naming",
    "check_output_path",
    "data_dictionary",
    "default_cache_for",
    "dictionary_path",
    "ood_columns",
    "ood_note",
    "read_predictions",
    "require_parquet",
    "rounded",
    "sd_column",
    "subject_predictions",
    "table_instance",
    "target_info",
    "to_long",
    "write_predictions",
    "write_table_files",
]
