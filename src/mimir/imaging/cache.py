"""The image cache: one `{exam}.npy` per exam plus a QC sidecar, written atomically.

The folder holds `{exam}.npy`, `qc/{exam}.json` and the tables of the last compression run,
`qc.csv` and `failures.csv`; the names are owned here and nowhere else.

A file in the cache is complete by construction (temporary file, then rename), so a rerun
after a crash can resume with the rest. What it finds is still checked before it is trusted
(`entry_problem`, from the .npy header and the file size, without loading the array): a file
truncated, replaced or damaged outside MIMIR is not a cached exam. Compression recomputes such
an entry when its exam is given again; readers refuse it with a reason. Only regular files are
read: a FIFO or device named like an image would block or stream forever.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mimir.atomic import (
    UnwritableError,
    atomic_path,
    atomic_write_text,
    check_can_create_folder,
    probe_folder,
)
from mimir.errors import MimirError
from mimir.imaging.errors import ExamReadError, Stage
from mimir.protocol import IMAGE_SHAPE

logger = logging.getLogger(__name__)

_QC_FOLDER = "qc"
_QC_TABLE = "qc.csv"
_FAILURES_TABLE = "failures.csv"
_NPY_MAGIC = b"\x93NUMPY"
#: The first bytes of a zip archive (an .npz) with members, and of an empty one.
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
#: The QC flag of an exam whose sidecar cannot be read.
UNREADABLE_QC_FLAG = "qc_unreadable"
#: UK Biobank bulk file names: `{eid}_{field}_{instance}_{array}`; fields have five digits.
_UKB_STEM = re.compile(r"^(?P<eid>\d+)_(?P<field>\d{5})_(?P<instance>\d+)_(?P<array>\d+)$")
#: Dixon technique for internal fat, the neck-to-knee body MRI MIMIR's networks read.
BODY_MRI_FIELD = 20201


class CacheError(MimirError, ValueError):
    """A cached image that is not a MIMIR representation."""


class CacheNotWritableError(UnwritableError):
    """The cache folder cannot take new files (checked before any exam is computed)."""


@dataclass(frozen=True)
class ExamId:
    """Participant and visit of an exam, parsed from its UK Biobank file stem when possible.

    Only field-20201 names give an eid and instance; `field` is the UK Biobank field a bulk
    file name gives (None for other names), so that an exam of another field (a liver, heart or
    brain scan downloaded into the same folder) is refused by name (`require_body_mri`) rather
    than predicted as if it were a body scan of that participant.
    """

    stem: str
    eid: int | None
    instance: int | None
    field: int | None = None

    @classmethod
    def from_stem(cls, stem: str) -> "ExamId":
        match = _UKB_STEM.match(stem)
        if match is None:
            return cls(stem=stem, eid=None, instance=None)
        field = int(match["field"])
        if field != BODY_MRI_FIELD:
            return cls(stem=stem, eid=None, instance=None, field=field)
        return cls(stem=stem, eid=int(match["eid"]), instance=int(match["instance"]), field=field)

    def require_body_mri(self) -> None:
        """Refuse (before reading) an exam whose UK Biobank name gives another field than 20201."""
        if self.field is not None and self.field != BODY_MRI_FIELD:
            raise ExamReadError(
                Stage.FIELD,
                f"the file name gives UK Biobank field {self.field}, not field {BODY_MRI_FIELD} (Dixon "
                "neck-to-knee body MRI), the only scans MIMIR reads; rename it only if it holds a field-20201 exam",
            )


def image_path(cache: Path, stem: str) -> Path:
    return Path(cache) / f"{stem}.npy"


def is_cached(cache: Path, stem: str) -> bool:
    """Whether the exam has a valid image in the cache (see `entry_problem`)."""
    return entry_problem(image_path(cache, stem)) is None


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


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a plain file"


def not_regular_reason(path: Path) -> str | None:
    """Why `path` is not a regular file to read (None when it is), found without opening it:
    opening a FIFO for reading blocks until a writer comes, a device can stream forever."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    return None if stat.S_ISREG(mode) else f"not a regular file ({_file_kind(mode)})"


def _open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading; anything else is a CacheError, never a blocked open."""
    reason = not_regular_reason(path)
    if reason is not None:
        raise CacheError(f"{path}: {reason}")
    try:
        # O_NONBLOCK: a FIFO swapped in after the check above still cannot block the open.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise CacheError(f"{path}: cannot be read ({error.strerror or error})") from error
    handle = os.fdopen(descriptor, "rb")
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        handle.close()
        raise CacheError(f"{path}: not a regular file ({_file_kind(mode)})")
    return handle


def _header_problem(handle: BinaryIO) -> str | None:
    """What is wrong with an open .npy file for the representation, from its header and size."""
    start = handle.read(len(_NPY_MAGIC))
    handle.seek(0)
    if start.startswith(_ZIP_MAGICS):
        return "not a readable .npy file (a zip archive such as .npz under a .npy name)"
    if not start:
        return "not a readable .npy file (an empty file)"
    if start != _NPY_MAGIC:
        return "not a .npy file (it does not start with the .npy magic string)"
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            return f"not a readable .npy file (format version {version[0]}.{version[1]})"
    except (ValueError, EOFError, OSError, SyntaxError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"not a readable .npy header ({detail})"
    if shape != IMAGE_SHAPE or dtype != np.uint8:
        return f"expected a {IMAGE_SHAPE} uint8 array, the header says {shape} {dtype}"
    expected = handle.tell() + int(np.prod(shape)) * dtype.itemsize
    size = os.fstat(handle.fileno()).st_size
    if size < expected:
        return f"truncated: {size} bytes, the header needs {expected}"
    if size > expected:
        return f"{size - expected} bytes beyond the array the header describes ({expected} bytes)"
    return None


def entry_problem(path: Path) -> str | None:
    """Why `path` is not a valid cache entry (None when it is): not a regular file, not a .npy
    file, a header that is not (3, 256, 256) uint8, or a size that does not match the header.
    Only the header is read, so a header declaring terabytes costs nothing."""
    try:
        with _open_regular(path) as handle:
            return _header_problem(handle)
    except CacheError as error:
        return str(error).replace(f"{path}: ", "", 1)


def load_image(path: Path) -> np.ndarray:
    """Load a cached image, refusing anything that is not the representation (the header and
    size are checked before the array is read, so nothing is allocated for a bad file)."""
    with _open_regular(path) as handle:
        problem = _header_problem(handle)
        if problem is not None:
            raise CacheError(f"{path}: {problem}")
        handle.seek(0)
        try:
            image = np.load(handle, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise CacheError(f"{path}: not a readable .npy file ({error})") from error
    return validate_image(image, str(path))


def prepare_cache(cache: Path) -> Path:
    """Make the cache folder and check that it takes new files, before any exam is computed
    (a read-only cache or a full disk would otherwise surface only at the final table write).
    A path through a regular file is named as such, not as mkdir's "Not a directory"."""
    cache = Path(cache)
    try:
        check_can_create_folder(cache)
    except UnwritableError as error:
        raise CacheNotWritableError(f"cache {error}") from error
    for folder in (cache, qc_folder(cache)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe_folder(folder)
        except OSError as error:
            raise CacheNotWritableError(f"cache {folder} cannot take new files ({error.strerror or error})") from error
    return cache


@dataclass(frozen=True)
class CachedExam:
    """One image of the cache and the exam its file name names."""

    exam: ExamId
    path: Path


def cached_exams(cache: Path) -> list[CachedExam]:
    """Every image file in the cache in file-name order (eid and instance None for names that
    are not UK Biobank field-20201 stems); what is not a regular file is left out with a warning."""
    exams = []
    for path in sorted(Path(cache).glob("*.npy")):
        reason = not_regular_reason(path)
        if reason is None:
            exams.append(CachedExam(ExamId.from_stem(path.stem), path))
        else:
            logger.warning("%s is left out of the cache listing: %s", path, reason)
    return exams


def qc_folder(cache: Path) -> Path:
    return Path(cache) / _QC_FOLDER


def qc_table_path(cache: Path) -> Path:
    return Path(cache) / _QC_TABLE


def failures_path(cache: Path) -> Path:
    return Path(cache) / _FAILURES_TABLE


def write_qc(cache: Path, stem: str, qc: dict[str, object]) -> None:
    atomic_write_text(qc_folder(cache) / f"{stem}.json", json.dumps(qc, default=str) + "\n")


def read_qc(cache: Path) -> list[dict[str, object]]:
    """QC rows of every cached exam (sidecars of exams without a valid image are ignored).

    A sidecar that cannot be read gives a row flagged `qc_unreadable` (with the reason in
    `read_notes`): its exam's real flag is unknown, which must show, not read as "fine".
    """
    rows = []
    for path in sorted(qc_folder(cache).glob("*.json")):
        if not is_cached(cache, path.stem):
            continue
        try:
            rows.append(_read_sidecar(path))
        except (CacheError, OSError, UnicodeDecodeError, ValueError) as error:
            reason = str(error).replace(f"{path}: ", "", 1)
            logger.warning("QC sidecar %s cannot be read: %s", path, reason)
            notes = f"qc sidecar unreadable: {reason}"
            rows.append({**exam_identity(path.stem), "flag": UNREADABLE_QC_FLAG, "read_notes": notes})
    return rows


def exam_identity(stem: str) -> dict[str, object]:
    """The identity columns of a QC row: subject (the stem), eid and instance."""
    exam = ExamId.from_stem(stem)
    return {"subject": stem, "eid": exam.eid, "instance": exam.instance}


def _read_sidecar(path: Path) -> dict[str, object]:
    with _open_regular(path) as handle:
        record = json.loads(handle.read().decode("utf-8"))
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, found {type(record).__name__}")
    return record


def qc_flags(cache: Path) -> dict[str, str]:
    """Each cached exam's QC flag ('' when fine): from the sidecars, else from qc.csv (a cache
    copied without its qc/ folder)."""
    records: list[dict[str, object]] = read_qc(cache)
    table = qc_table_path(cache)
    if not records and table.is_file():
        try:
            with table.open(newline="") as handle:
                records = list(csv.DictReader(handle))
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            logger.warning("%s cannot be read (%s): no QC flags", table, error)
    return {str(record.get("subject", "")): _flag_text(record.get("flag")) for record in records}


def _flag_text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)
