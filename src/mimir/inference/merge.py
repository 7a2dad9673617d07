"""The tables of a prediction split into parts (`mimir predict --part K/N`), joined into one.

Each part's data dictionary records which part it is (`"part": "K/N"`), so a merge can refuse
what would silently give a wrong table: a part missing or given twice, parts of different splits
(N), tables of different modules or forms, or one exam in two parts. Values are carried over as
written (CSV cells as text), so the merged table holds the digits each part wrote; rows are
sorted by exam, as the parts split the inputs by exam id and no input order survives them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mimir.errors import MimirError
from mimir.inference.table import check_output_path, dictionary_path, require_parquet, write_table_files
from mimir.parallel import Part

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)


class MergeError(MimirError, ValueError):
    """The tables given cannot be merged into the table of one run."""


@dataclass(frozen=True)
class PartTable:
    """One part's table and its data dictionary."""

    path: Path
    part: Part
    dictionary: dict[str, Any]


def read_part(path: str | Path) -> PartTable:
    """A part's table path with its dictionary; refused when the dictionary names no part."""
    path = Path(path)
    if not path.is_file():
        raise MergeError(f"{path}: no such predictions table")
    described = dictionary_path(path)
    if not described.is_file():
        raise MergeError(f"{path}: its data dictionary {described.name} is missing, so its part is unknown")
    try:
        dictionary = json.loads(described.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MergeError(f"{described}: not a readable data dictionary: {error}") from error
    recorded = dictionary.get("part") if isinstance(dictionary, dict) else None
    if not isinstance(recorded, str):
        raise MergeError(f"{path} is not a part: it was written without --part K/N")
    try:
        return PartTable(path, Part.parse(recorded), dictionary)
    except MimirError as error:
        raise MergeError(f"{described}: {error}") from error


def check_parts(parts: Sequence[PartTable]) -> None:
    """Every part of one split, once each, of one form and with the same columns."""
    if not parts:
        raise MergeError("no part tables given")
    counts = sorted({part.part.count for part in parts})
    if len(counts) > 1:
        raise MergeError(f"the tables come from different splits (N = {', '.join(map(str, counts))})")
    count = counts[0]
    by_index: dict[int, list[Path]] = {}
    for part in parts:
        by_index.setdefault(part.part.index, []).append(part.path)
    twice = {index: paths for index, paths in by_index.items() if len(paths) > 1}
    if twice:
        index, paths = min(twice.items())
        raise MergeError(f"part {index}/{count} given more than once: {', '.join(map(str, paths))}")
    missing = [f"{index}/{count}" for index in range(count) if index not in by_index]
    if missing:
        raise MergeError(f"parts missing: {', '.join(missing)} (of {count})")
    first = parts[0]
    for part in parts[1:]:
        if part.dictionary.get("form") != first.dictionary.get("form"):
            raise MergeError(f"{part.path} is a {part.dictionary.get('form')} table, {first.path} a {first.dictionary.get('form')} one")
        if _column_names(part) != _column_names(first):
            raise MergeError(f"{part.path} has other columns than {first.path}: were they predicted with the same modules?")


def _column_names(part: PartTable) -> list[str]:
    return [column["column"] for column in part.dictionary.get("columns", [])]


def _read_as_written(path: Path) -> pd.DataFrame:
    import pandas as pd

    if path.suffix.lower() == ".parquet":
        require_parquet()
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def merge_parts(paths: Sequence[str | Path]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The merged table (rows sorted by exam) and its data dictionary."""
    import pandas as pd

    parts = sorted((read_part(path) for path in paths), key=lambda part: part.part.index)
    check_parts(parts)
    tables = []
    for part in parts:
        table = _read_as_written(part.path)
        if list(table.columns) != _column_names(part):
            raise MergeError(f"{part.path}: its columns differ from its data dictionary's")
        tables.append(table.assign(_part=str(part.part)))
    merged = pd.concat(tables, ignore_index=True)
    key = ["exam", "target"] if parts[0].dictionary.get("form") == "long" else ["exam"]
    repeated = merged[merged.duplicated(key, keep=False)]
    if not repeated.empty:
        exam = repeated.iloc[0]["exam"]
        where = sorted(set(repeated.loc[repeated["exam"] == exam, "_part"]))
        raise MergeError(
            f"{repeated['exam'].nunique()} exams are in more than one part, e.g. {exam} in parts {', '.join(where)}"
        )
    merged = merged.drop(columns="_part").sort_values(key, kind="stable", ignore_index=True)
    dictionary = {name: value for name, value in parts[0].dictionary.items() if name != "part"}
    dictionary["merged_from_parts"] = parts[0].part.count
    return merged, dictionary


def write_merged(paths: Sequence[str | Path], out: str | Path) -> Path:
    """Merge the part tables into `out` (.csv or .parquet, as the parts) and its dictionary, atomically."""
    suffixes = {Path(path).suffix.lower() for path in paths}
    if suffixes != {Path(out).suffix.lower()}:
        raise MergeError(f"the parts are {' and '.join(sorted(suffixes))} tables; write the merged table as the same ({out})")
    out = check_output_path(out)
    merged, dictionary = merge_parts(paths)
    write_table_files(merged, dictionary, out, "nothing was written there; the parts are unchanged")
    logger.info("merged %d parts (%d rows) into %s", len(paths), len(merged), out)
    return out


__all__ = ["MergeError", "PartTable", "check_parts", "merge_parts", "read_part", "write_merged"]
