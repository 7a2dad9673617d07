"""The image cache: one `{exam}.npy` per exam plus a QC sidecar, written atomically.

The folder holds `{exam}.npy`, `qc/{exam}.json` and the tables of the last compression run,
`qc.csv` and `failures.csv`; the names are owned here and nowhere else.

A file in the cache is complete by construction (temporary file, then rename), so a rerun
after a crash can trust whatever it finds and resume with the rest.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimir.atomic import atomic_path, atomic_write_text
from mimir.errors import MimirError
from mimir.protocol import IMAGE_SHAPE

_QC_FOLDER = "qc"
_QC_TABLE = "qc.csv"
_FAILURES_TABLE = "failures.csv"
_UKB_STEM = re.compile(r"^(?P<eid>\d+)_20201_(?P<instance>\d+)_(?P<array>\d+)$")


class CacheError(MimirError, ValueError):
    """A cached image that is not a MIMIR representation."""


@dataclass(frozen=True)
class ExamId:
    """Participant and visit of an exam, parsed from its UK Biobank file stem when possible."""

    stem: str
    eid: int | None
    instance: int | None

    @classmethod
    def from_stem(cls, stem: str) -> "ExamId":
        match = _UKB_STEM.match(stem)
        if match is None:
            return cls(stem=stem, eid=None, instance=None)
        return cls(stem=stem, eid=int(match["eid"]), instance=int(match["instance"]))


def image_path(cache: Path, stem: str) -> Path:
    return Path(cache) / f"{stem}.npy"


def is_cached(cache: Path, stem: str) -> bool:
    return image_path(cache, stem).is_file()


def validate_image(image: np.ndarray, origin: str = "image") -> np.ndarray:
    if image.shape != IMAGE_SHAPE or image.dtype != np.uint8:
        raise CacheError(
            f"{origin}: expected a {IMAGE_SHAPE} uint8 array, found {image.shape} {image.dtype}"
        )
    return image


def write_image(cache: Path, stem: str, image: np.ndarray) -> Path:
    validate_image(image, stem)
    target = image_path(cache, stem)
    with atomic_path(target) as temporary:
        with temporary.open("wb") as handle:
            np.save(handle, image, allow_pickle=False)
    return target


def load_image(path: Path) -> np.ndarray:
    """Load a cached image, refusing anything that is not the representation."""
    try:
        image = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise CacheError(f"{path}: not a readable .npy file ({error})") from error
    return validate_image(image, str(path))


@dataclass(frozen=True)
class CachedExam:
    """One image of the cache and the exam its file name names."""

    exam: ExamId
    path: Path


def cached_exams(cache: Path) -> list[CachedExam]:
    """Every image in the cache in file-name order (eid and instance None for names that are
    not UK Biobank field-20201 stems)."""
    return [CachedExam(ExamId.from_stem(path.stem), path) for path in sorted(Path(cache).glob("*.npy"))]


def qc_folder(cache: Path) -> Path:
    return Path(cache) / _QC_FOLDER


def qc_table_path(cache: Path) -> Path:
    return Path(cache) / _QC_TABLE


def failures_path(cache: Path) -> Path:
    return Path(cache) / _FAILURES_TABLE


def write_qc(cache: Path, stem: str, qc: dict[str, object]) -> None:
    atomic_write_text(qc_folder(cache) / f"{stem}.json", json.dumps(qc, default=str) + "\n")


def read_qc(cache: Path) -> list[dict[str, object]]:
    """QC rows of every cached exam (sidecars of exams without an image are ignored)."""
    rows = []
    for path in sorted(qc_folder(cache).glob("*.json")):
        if is_cached(cache, path.stem):
            rows.append(json.loads(path.read_text()))
    return rows


def qc_flags(cache: Path) -> dict[str, str]:
    """Each cached exam's QC flag ('' when fine): from the sidecars, else from qc.csv (a cache
    copied without its qc/ folder)."""
    records: list[dict[str, object]] = read_qc(cache)
    table = qc_table_path(cache)
    if not records and table.is_file():
        with table.open(newline="") as handle:
            records = list(csv.DictReader(handle))
    return {str(record.get("subject", "")): _flag_text(record.get("flag")) for record in records}


def _flag_text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)
