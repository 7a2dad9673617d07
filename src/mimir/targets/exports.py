"""UK Biobank tabular exports -> the targets table (`eid`, `instance`, one column per target).

Two export shapes are common and both are read, comma- or tab-separated:
- ukbconv: `eid`, `{field}-{instance}.{array}` (e.g. `22407-2.0`); its R flavour uses
  `f.eid` and `f.{field}.{instance}.{array}`.
- Research Analysis Platform (RAP): `participant.eid` or `eid`, and `p{field}_i{instance}`,
  optionally `_a{array}` and a `participant.` prefix; fields recorded once (sex) have no
  `_i` part, which we read as instance 0.
Targets without a UK Biobank field appear under their catalog name. Array index 0 is used,
except for fields of repeated measurements (pulse rate: arrays 0 and 1), whose arrays present
are averaged. Values are converted from each field's showcase unit to the catalog's (DXA
masses from g to kg): `mimir.targets.fields` holds both facts, docs/targets_units.md lists them.
Only the header is parsed in full; values are read for the selected columns alone, so very
wide exports stay cheap.

A value that cannot be a measurement of its target (see `Target.value_rule`: not finite,
negative in a unit that cannot be, not 0 or 1 for a binary target) is set to missing, with one
warning per target.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mimir.atomic import atomic_path
from mimir.errors import MimirError
from mimir.targets.catalog import Target, catalog
from mimir.targets.fields import SCALE_TOLERANCE, array_count, catalog_factor, field_facts, typical_value

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

logger = logging.getLogger(__name__)

#: UK Biobank field of sex, recorded once at the baseline visit (instance 0).
SEX_FIELD = 31
EID_COLUMNS = ("eid", "participant.eid", "f.eid")
MISSING_TOKENS = frozenset({"", "na", "nan", "n/a", "null", "none"})
#: RAP exports may replace codes by their meaning; sex is the one catalog target affected.
SEX_MEANINGS = {"male": 1.0, "female": 0.0}
#: UK Biobank instances of the imaging visits: 2 the first, 3 the repeat.
IMAGING_INSTANCES = (2, 3)
#: The longest header line read (about 100 times the widest real export's): a binary file
#: without line breaks is refused rather than read whole.
MAX_HEADER_CHARS = 64 * 1024 * 1024
#: What reading a file that is not (gzipped) UTF-8 text raises.
_NOT_TEXT = (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error)

_UKBCONV = re.compile(r"(\d+)-(\d+)\.(\d+)")
_UKBCONV_LIKE = re.compile(r"\d+(?:[-.].*)?")
_R_STYLE = re.compile(r"f\.(\d+)\.(\d+)\.(\d+)")
_R_STYLE_LIKE = re.compile(r"f\.\d+(?:\..*)?")
_RAP = re.compile(r"(?:participant\.)?p(\d+)(?:_i(\d+))?(?:_a(\d+))?")
_RAP_LIKE = re.compile(r"(?:participant\.)?p\d+(?:_.*)?")


class ExportFormatError(MimirError, ValueError):
    """An export whose header or values cannot be turned into a targets table."""


@dataclass(frozen=True)
class FieldColumn:
    """A column that holds one UK Biobank field at one instance and array index."""

    field: int
    instance: int
    array: int


def parse_field_column(column: str) -> FieldColumn | None:
    """The field, instance and array a column name encodes; None if it names no field.

    Raises ExportFormatError for names that look like a field column but whose
    instance/array suffix is malformed (e.g. `22407-2`, `22407-x.0`, `p22407_i`).
    """
    name = column.strip()
    for pattern, looks_like, expected in (
        (_UKBCONV, _UKBCONV_LIKE, "FIELD-INSTANCE.ARRAY such as 22407-2.0"),
        (_R_STYLE, _R_STYLE_LIKE, "f.FIELD.INSTANCE.ARRAY such as f.22407.2.0"),
        (_RAP, _RAP_LIKE, "pFIELD_iINSTANCE[_aARRAY] such as p22407_i2"),
    ):
        match = pattern.fullmatch(name)
        if match:
            field, instance, array = match.groups()
            return FieldColumn(int(field), int(instance or 0), int(array or 0))
        if looks_like.fullmatch(name):
            raise ExportFormatError(
                f"column {column!r} looks like a UK Biobank field column but its instance/array "
                f"suffix is malformed; expected {expected}"
            )
    return None


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_header(path: Path) -> tuple[list[str], str]:
    """Column names and delimiter (tab if the header has more tabs than commas)."""
    try:
        with _open_text(path) as handle:
            first_line = handle.readline(MAX_HEADER_CHARS)
    except _NOT_TEXT as error:
        raise ExportFormatError(f"{path}: not a text table: {error} (expected a UTF-8 CSV or TSV export, optionally gzipped)") from error
    if "\x00" in first_line:
        raise ExportFormatError(f"{path}: not a text table: its first line holds NUL bytes")
    if len(first_line) == MAX_HEADER_CHARS:
        raise ExportFormatError(f"{path}: not a text table: no line break in its first {MAX_HEADER_CHARS} characters")
    if not first_line.strip():
        raise ExportFormatError(f"{path}: empty file, expected a header line")
    delimiter = "\t" if first_line.count("\t") > first_line.count(",") else ","
    columns = next(csv.reader([first_line.rstrip("\r\n")], delimiter=delimiter))
    return [column.strip() for column in columns], delimiter


def _duplicates(names: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    repeated: list[str] = []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    return repeated


def find_eid_column(columns: Sequence[str]) -> str:
    present = [column for column in columns if column in EID_COLUMNS]
    if not present:
        shown = ", ".join(repr(column[:40]) for column in columns[:8])
        raise ExportFormatError(
            f"no participant id column: expected one of {', '.join(EID_COLUMNS)}; the header starts with {shown}"
        )
    if len(present) > 1:
        raise ExportFormatError(f"several participant id columns: {', '.join(present)}")
    return present[0]


@dataclass(frozen=True)
class ColumnSelection:
    """Which export columns feed which catalog target (one per array index read, in array
    order), and what was left out."""

    eid_column: str
    by_target: dict[str, tuple[str, ...]]
    ignored: tuple[str, ...]
    other_instances: tuple[str, ...]

    @property
    def target_columns(self) -> list[str]:
        """Every column read for a target."""
        return [column for columns in self.by_target.values() for column in columns]


def select_columns(columns: Sequence[str], instance: int, targets: Sequence[Target]) -> ColumnSelection:
    """Map catalog targets to export columns; raise on malformed or ambiguous headers."""
    repeated = _duplicates(columns)
    if repeated:
        raise ExportFormatError(f"duplicated columns: {', '.join(repeated)}")
    eid_column = find_eid_column(columns)
    target_by_field = {t.ukb_field: t for t in targets if t.ukb_field is not None}
    named_targets = {t.name for t in targets if t.ukb_field is None}
    found: dict[tuple[str, int], str] = {}
    ignored: list[str] = []
    other_instances: list[str] = []
    for column in columns:
        if column == eid_column:
            continue
        parsed = parse_field_column(column)
        array = 0
        if parsed is None:
            name = column if column in named_targets else None
        elif parsed.field in target_by_field:
            target = target_by_field[parsed.field]
            wanted = 0 if parsed.field == SEX_FIELD else instance
            if parsed.instance != wanted or parsed.array >= array_count(target):
                other_instances.append(column)
                continue
            name, array = target.name, parsed.array
        else:
            name = None
        if name is None:
            ignored.append(column)
            continue
        if (name, array) in found:
            where = f" (array {array})" if array else ""
            raise ExportFormatError(f"columns {found[name, array]!r} and {column!r} both hold target {name}{where}")
        found[name, array] = column
    names = dict.fromkeys(name for name, _ in found)  # in header order
    by_target = {name: tuple(found[key] for key in sorted(key for key in found if key[0] == name)) for name in names}
    return ColumnSelection(eid_column, by_target, tuple(ignored), tuple(other_instances))


def _numeric_column(values: "pd.Series", column: str, target: str, eids: "pd.Series") -> "pd.Series":
    """Floats from export text: missing tokens become NaN, anything else unparsable raises."""
    import pandas as pd

    stripped = values.astype(str).str.strip()
    lowered = stripped.str.lower()
    missing = lowered.isin(MISSING_TOKENS)
    numbers = pd.to_numeric(stripped.where(~missing), errors="coerce").astype("float64")
    if target == "sex":
        numbers = numbers.fillna(lowered.map(SEX_MEANINGS).astype("float64"))
    bad = numbers.isna() & ~missing
    if bad.any():
        position = int(bad.to_numpy().nonzero()[0][0])
        raise ExportFormatError(
            f"column {column!r} ({target}) holds a non-numeric value {values.iloc[position]!r} "
            f"for eid {eids.iloc[position]} ({int(bad.sum())} such values)"
        )
    return numbers.reset_index(drop=True)


#: Participant ids are 7 digits; 18 is the most an int64 holds whatever the digits.
_EID_PATTERN = r"\d{1,18}"


def _parse_eids(values: "pd.Series", column: str) -> "pd.Series":
    stripped = values.astype(str).str.strip()
    valid = stripped.str.fullmatch(_EID_PATTERN)
    if not valid.all():
        example = values[~valid].iloc[0]
        raise ExportFormatError(f"column {column!r} holds {example!r}, not a participant id")
    return stripped.astype("int64").reset_index(drop=True)


def _summarise(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


def check_selection(columns: Sequence[str], selection: ColumnSelection, instance: int, targets: Sequence[Target]) -> None:
    """Refuse an export that would give a table of nothing, or of values from no known visit.

    No target column at all is an error, not an empty table. An instance that is not an imaging
    visit needs field columns of its own: columns without an instance (sex, targets named as
    in the catalog) would otherwise be copied to whatever instance was asked for.
    """
    if not selection.by_target:
        found = [column for column in columns if column != selection.eid_column]
        message = (
            f"no target columns: found {len(found)} besides {selection.eid_column!r}"
            f"{': ' + _summarise(found) if found else ''}; looked for {_what_is_looked_for(targets, instance)}"
        )
        if selection.other_instances:
            message += (
                f"; the export has catalog fields of other instances or array indices "
                f"({_summarise(selection.other_instances)}): is instance {instance} the one wanted?"
            )
        raise ExportFormatError(message)
    if instance in IMAGING_INSTANCES or any(_is_of_instance(column, instance) for column in selection.target_columns):
        return
    present = sorted({parsed.instance for parsed in map(parse_field_column, selection.other_instances) if parsed})
    raise ExportFormatError(
        f"instance {instance} is not an imaging visit ({IMAGING_INSTANCES[0]} first, {IMAGING_INSTANCES[1]} "
        f"repeat) and no target column is of instance {instance}"
        f"{' (the catalog fields present are of instance ' + ', '.join(map(str, present)) + ')' if present else ''}; "
        f"the columns without one ({_summarise(selection.target_columns)}) would be copied to it"
    )


def _is_of_instance(column: str, instance: int) -> bool:
    """A field column recorded at `instance` (sex, recorded once, belongs to no visit)."""
    parsed = parse_field_column(column)
    return parsed is not None and parsed.field != SEX_FIELD and parsed.instance == instance


def _what_is_looked_for(targets: Sequence[Target], instance: int) -> str:
    fields = [t.ukb_field for t in targets if t.ukb_field is not None and t.ukb_field != SEX_FIELD]
    named = [t.name for t in targets if t.ukb_field is None]
    wanted = []
    if fields:
        example = fields[0]
        wanted.append(
            f"the UK Biobank fields of {len(fields)} catalog targets at instance {instance} "
            f"(such as {example}-{instance}.0, p{example}_i{instance} or f.{example}.{instance}.0)"
        )
    if any(t.ukb_field == SEX_FIELD for t in targets):
        wanted.append(f"sex ({SEX_FIELD}-0.0 or p{SEX_FIELD})")
    if named:
        wanted.append(f"columns named {_summarise(named)}")
    return ", ".join(wanted)


def set_implausible_to_missing(table: "pd.DataFrame", targets: Sequence[Target], source: Path) -> "pd.DataFrame":
    """Values that cannot be a measurement of their target become missing (`Target.value_rule`):
    not finite; negative where the unit cannot be; not 0 or 1 for a binary target. One warning
    per target says how many and why; the table is changed in place and returned."""
    for target in targets:
        table[target.name] = _without_implausible(table[target.name].to_numpy(dtype="float64"), target, source)
    return table


def _without_implausible(values: "np.ndarray", target: Target, source: Path) -> "np.ndarray":
    """`values` (of any shape: one column per array index) with the implausible ones missing,
    and one warning saying how many and why."""
    import numpy as np

    finite = np.isfinite(values)
    checks = {"not finite": np.isinf(values)}
    if target.is_binary:
        checks["not 0 or 1"] = finite & (values != 0) & (values != 1)
    elif not target.can_be_negative:
        checks["negative"] = finite & (values < 0)
    bad = np.logical_or.reduce(list(checks.values()))
    if not bad.any():
        return values
    counts = ", ".join(f"{int(mask.sum())} {reason}" for reason, mask in checks.items() if mask.any())
    count = int(bad.sum())
    logger.warning(
        "%s: %s: %d value%s set to missing (%s): a value must be %s",
        source, target.name, count, "" if count == 1 else "s", counts, target.value_rule,
    )
    return np.where(bad, math.nan, values)


def _mean_over_arrays(readings: "np.ndarray") -> "np.ndarray":
    """Row means of the readings present (one column per array index); missing where none is."""
    import numpy as np

    present = np.isfinite(readings)
    count = present.sum(axis=1)
    total = np.where(present, readings, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), math.nan)


def _target_values(
    raw: "pd.DataFrame", columns: tuple[str, ...], target: Target, eids: "pd.Series", source: Path
) -> "np.ndarray":
    """One target's values in the catalog's unit: each array's column parsed, converted by the
    field's factor, implausible readings dropped, then the readings present averaged."""
    import numpy as np

    readings = np.column_stack([_numeric_column(raw[column], column, target.name, eids).to_numpy() for column in columns])
    readings = _without_implausible(readings * catalog_factor(target), target, source)
    if len(columns) > 1:
        counts = np.isfinite(readings).sum(axis=1)
        logger.info(
            "%s: the mean of the readings present in %s: %d participants with all %d, %d with fewer",
            target.name, ", ".join(columns), int((counts == len(columns)).sum()), len(columns),
            int(((counts > 0) & (counts < len(columns))).sum()),
        )
    return _mean_over_arrays(readings)


#: The fewest values whose median is compared with a target's typical value.
_SCALE_CHECK_MIN_VALUES = 10


def warn_unlikely_scale(table: "pd.DataFrame", targets: Sequence[Target], source: Path) -> None:
    """Warn about a target whose median is far from its published typical value (`typical_value`):
    the export likely holds it in another unit than its field's showcase unit (docs/targets_units.md)."""
    for target in targets:
        values = table[target.name].dropna().abs()
        typical = typical_value(target)
        if len(values) < _SCALE_CHECK_MIN_VALUES or math.isnan(typical):
            continue
        median = float(values.median())
        if typical / SCALE_TOLERANCE <= median <= typical * SCALE_TOLERANCE:
            continue
        field = f"field {target.ukb_field}" if target.ukb_field is not None else f"column {target.name}"
        logger.warning(
            "%s: %s: the median value, %.4g %s, is far from the published data's typical %.4g %s: "
            "is %s in the unit that docs/targets_units.md gives for it?",
            source, target.name, median, target.unit, typical, target.unit, field,
        )


def _check_and_log_conversions(selection: ColumnSelection, targets: Sequence[Target]) -> None:
    """Refuse (FieldUnitError) a target of the export whose field's unit is unknown or cannot be
    converted, before any row is read; log one line naming the targets that are converted."""
    converted = [
        f"{t.name} {field_facts()[t.ukb_field].ukb_unit}->{t.unit}"
        for t in targets
        if t.name in selection.by_target and catalog_factor(t) != 1.0
    ]
    if converted:
        logger.info(
            "converted %d targets from their UK Biobank unit to the catalog's: %s", len(converted), _summarise(converted)
        )


def _log_selection(selection: ColumnSelection, targets: Sequence[Target], instance: int) -> None:
    if selection.ignored:
        logger.info(
            "ignored %d columns that hold no catalog target: %s", len(selection.ignored), _summarise(selection.ignored)
        )
    if selection.other_instances:
        # only other visits' measurements (sex and named targets have none): likely the wrong instance
        wrong_visit = not any(_is_of_instance(column, instance) for column in selection.target_columns)
        (logger.warning if wrong_visit else logger.info)(
            "ignored %d catalog-field columns of other instances or array indices (using instance %d; array 0, "
            "or every array of fields of repeated measurements): %s",
            len(selection.other_instances),
            instance,
            _summarise(selection.other_instances),
        )
    missing = [t.name for t in targets if t.name not in selection.by_target]
    if missing:
        logger.info("%d of %d targets are not in the export: %s", len(missing), len(targets), _summarise(missing))


def export_to_targets(
    path: Path | str, instance: int = 2, targets: Sequence[Target] | None = None
) -> "pd.DataFrame":
    """Read a UK Biobank export into the targets table for one imaging instance.

    One row per eid that has at least one target value; every requested target is a column
    (NaN where the export lacks it). Raises ExportFormatError, naming the file, for malformed
    exports.
    """
    path = Path(path)
    chosen = tuple(targets) if targets is not None else catalog()
    columns, delimiter = read_header(path)
    try:
        return _targets_from_rows(path, columns, delimiter, instance, chosen)
    except ExportFormatError as error:
        raise ExportFormatError(f"{path}: {error}") from error


def _targets_from_rows(
    path: Path, columns: Sequence[str], delimiter: str, instance: int, chosen: Sequence[Target]
) -> "pd.DataFrame":
    """The targets table from an export whose header is read; the caller names the file in errors."""
    import pandas as pd

    selection = select_columns(columns, instance, chosen)
    check_selection(columns, selection, instance, chosen)
    _log_selection(selection, chosen, instance)
    _check_and_log_conversions(selection, chosen)
    wanted = {selection.eid_column, *selection.target_columns}
    try:
        raw = pd.read_csv(
            path,
            sep=delimiter,
            usecols=lambda name: name.strip() in wanted,
            dtype=str,
            keep_default_na=False,
            encoding="utf-8-sig",
        )
    except (pd.errors.ParserError, *_NOT_TEXT) as error:
        raise ExportFormatError(f"unreadable rows: {error}") from error
    raw.columns = [str(column).strip() for column in raw.columns]
    eids = _parse_eids(raw[selection.eid_column], selection.eid_column)
    repeated = eids[eids.duplicated()].unique()
    if repeated.size:
        raise ExportFormatError(f"duplicated eid rows, e.g. {', '.join(map(str, repeated[:5]))}")
    columns_out: dict[str, pd.Series] = {
        "eid": eids,
        "instance": pd.Series(instance, index=eids.index, dtype="int64"),
    }
    for target in chosen:
        found = selection.by_target.get(target.name)
        columns_out[target.name] = (
            pd.Series(math.nan, index=eids.index, dtype="float64")
            if found is None
            else pd.Series(_target_values(raw, found, target, eids, path), index=eids.index)
        )
    table = pd.DataFrame(columns_out)
    warn_unlikely_scale(table, chosen, path)
    values = table[[t.name for t in chosen]]
    empty = values.isna().all(axis=1)
    if empty.any():
        logger.info("dropped %d eids without any target value", int(empty.sum()))
    table = table.loc[~empty].reset_index(drop=True)
    logger.info("read %d eids with %d targets from %s", len(table), len(selection.by_target), path)
    return table


def is_targets_table(columns: Sequence[str]) -> bool:
    """True for a table already in targets form: `eid`, `instance` and no field columns."""
    if "eid" not in columns or "instance" not in columns:
        return False
    return all(parse_field_column(column) is None for column in columns)


def read_targets_table(path: Path | str, targets: Sequence[Target] | None = None) -> "pd.DataFrame":
    """Read a targets table (as written by `write_targets_table`), checking its columns."""
    import pandas as pd

    path = Path(path)
    columns, delimiter = read_header(path)
    repeated = _duplicates(columns)
    if repeated:
        raise ExportFormatError(f"{path}: duplicated columns: {', '.join(repeated)}")
    if not is_targets_table(columns):
        raise ExportFormatError(f"{path}: not a targets table (needs eid and instance columns, no field columns)")
    chosen = tuple(targets) if targets is not None else catalog()
    names = [t.name for t in chosen if t.name in columns]
    try:
        table = pd.read_csv(path, sep=delimiter, usecols=["eid", "instance", *names], encoding="utf-8-sig")
    except (pd.errors.ParserError, *_NOT_TEXT) as error:
        raise ExportFormatError(f"{path}: unreadable rows: {error}") from error
    for column in ("eid", "instance"):
        if table[column].isna().any() or not pd.api.types.is_integer_dtype(table[column]):
            raise ExportFormatError(f"{path}: column {column!r} must hold integers in every row")
        if (table[column].abs() >= 10**18).any():
            raise ExportFormatError(f"{path}: column {column!r} holds integers too large for an id")
    for name in names:
        if not pd.api.types.is_numeric_dtype(table[name]):
            raise ExportFormatError(f"{path}: column {name!r} holds non-numeric values")
    result = pd.DataFrame(
        {
            "eid": table["eid"].astype("int64"),
            "instance": table["instance"].astype("int64"),
            **{
                t.name: table[t.name].astype("float64") if t.name in names else math.nan
                for t in chosen
            },
        }
    )
    return set_implausible_to_missing(result, [t for t in chosen if t.name in names], path)


def read_reference(path: Path | str, instance: int = 2, targets: Sequence[Target] | None = None) -> "pd.DataFrame":
    """A targets table from either a targets table or a raw UK Biobank export."""
    columns, _ = read_header(Path(path))
    if is_targets_table(columns):
        return read_targets_table(path, targets)
    return export_to_targets(path, instance, targets)


def write_targets_table(table: "pd.DataFrame", path: Path | str) -> None:
    """Write the targets table atomically (a killed run leaves the old file or none)."""
    with atomic_path(Path(path)) as temporary:
        table.to_csv(temporary, index=False)
