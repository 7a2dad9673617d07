"""Exclusion lists: participants (or visits) whose images are known to be unusable.

UK Biobank returns such lists from the groups that checked the images (return 3072 lists the
eids of neck-to-knee exams with imaging artefacts). `mimir predict`, `mimir train` and `mimir
crossval run` take one as `--exclude FILE`; the exams it names are left out and counted, never
silently. Two formats are read:

- a text file with one eid per line; blank lines and lines starting with `#` are ignored, and
  a first line `eid` is a header;
- a CSV or TSV table (comma or tab on its first line) with a column named `eid` (or
  `participant.eid`, as Research Analysis Platform exports name it) and optionally `instance`:
  a row with an instance leaves out that visit only, a row without one every visit.

Exams are matched by the eid and instance of their UK Biobank file name (`{eid}_20201_{instance}_
{array}`, `mimir.imaging.cache.ExamId`); an exam named otherwise has no eid and is never excluded.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from mimir.errors import MimirError
from mimir.imaging.cache import ExamId

logger = logging.getLogger(__name__)

#: Column names that hold the eid in a table (lower case).
EID_COLUMNS = ("eid", "participant.eid")
INSTANCE_COLUMN = "instance"


class ExclusionListError(MimirError, ValueError):
    """An exclusion list that cannot be read as eids."""


@dataclass(frozen=True)
class ExclusionList:
    """Whom a list excludes: every visit of `eids`, and the single visits of `visits`."""

    source: Path
    eids: frozenset[int]
    visits: frozenset[tuple[int, int]] = frozenset()

    def __len__(self) -> int:
        return len(self.eids) + len(self.visits)

    def excludes(self, eid: int | None, instance: int | None) -> bool:
        if eid is None:
            return False
        return eid in self.eids or (eid, instance) in self.visits

    def excludes_exam(self, stem: str) -> bool:
        """Whether the exam of this file stem (e.g. 1234567_20201_2_0) is on the list."""
        exam = ExamId.from_stem(stem)
        return self.excludes(exam.eid, exam.instance)


def read_exclusion_list(path: str | Path) -> ExclusionList:
    """The eids (and visits) a file lists; one line naming the file and line for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ExclusionListError(f"exclusion list {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ExclusionListError(f"exclusion list {path}: not a text file of eids ({error.reason} at byte {error.start})") from error
    except OSError as error:
        raise ExclusionListError(f"exclusion list {path}: cannot be read ({error.strerror or error})") from error
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)]
    lines = [(number, line) for number, line in lines if line and not line.startswith("#")]
    if lines and ("," in lines[0][1] or "\t" in lines[0][1]):
        exclusions = _from_table(path, lines)
    else:
        exclusions = _from_lines(path, lines)
    if not len(exclusions):
        logger.warning("exclusion list %s names no eids; nothing is excluded", path)
    return exclusions


def _integer(path: Path, number: int, value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ExclusionListError(f"exclusion list {path}, line {number}: {value!r} is not {what}") from None


def _from_lines(path: Path, lines: list[tuple[int, str]]) -> ExclusionList:
    if lines and lines[0][1].lower() in EID_COLUMNS:
        lines = lines[1:]
    return ExclusionList(path, frozenset(_integer(path, number, line, "an eid (a whole number)") for number, line in lines))


def _from_table(path: Path, lines: list[tuple[int, str]]) -> ExclusionList:
    delimiter = "\t" if "\t" in lines[0][1] else ","

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in next(csv.reader([line], delimiter=delimiter))]

    header = [name.lower() for name in cells(lines[0][1])]
    eid_column = next((header.index(name) for name in EID_COLUMNS if name in header), None)
    if eid_column is None:
        raise ExclusionListError(
            f"exclusion list {path}: a table needs a column named eid; its header is {', '.join(header)}"
        )
    instance_column = header.index(INSTANCE_COLUMN) if INSTANCE_COLUMN in header else None
    eids: set[int] = set()
    visits: set[tuple[int, int]] = set()
    for number, line in lines[1:]:
        row = cells(line)
        eid = _integer(path, number, row[eid_column] if eid_column < len(row) else "", "an eid (a whole number)")
        instance = row[instance_column] if instance_column is not None and instance_column < len(row) else ""
        if instance:
            visits.add((eid, _integer(path, number, instance, "an instance (a visit number)")))
        else:
            eids.add(eid)
    return ExclusionList(path, frozenset(eids), frozenset(visits))


__all__ = ["ExclusionList", "ExclusionListError", "read_exclusion_list"]
