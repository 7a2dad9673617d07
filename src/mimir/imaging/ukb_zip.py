"""UK Biobank field-20201 zips to water/fat stations, read in memory (nothing is extracted).

The archive is checked before anything is decompressed: unsafe member names and declared
sizes beyond `ReadLimits` are refused. The manifest is never read; DICOM headers decide.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from mimir.imaging.dicom_series import Member, ReadLimits, read_members
from mimir.imaging.errors import ExamReadError, Stage
from mimir.imaging.station import ExamStations

logger = logging.getLogger(__name__)

_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
_DRIVE_PREFIX = re.compile(r"^[A-Za-z]:")
#: Failures of one member's bytes (bad CRC, broken deflate stream, truncated local data).
_MEMBER_ERRORS: tuple[type[BaseException], ...] = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError)


def read_zip(path: str | Path, limits: ReadLimits = ReadLimits()) -> ExamStations:
    """Stations of one exam zip on disk."""
    path = Path(path)
    if not path.is_file():
        raise ExamReadError(Stage.OPEN, f"no such zip file: {path}")
    size = path.stat().st_size
    if size > limits.max_container_bytes:
        raise ExamReadError(Stage.SAFETY, f"zip is {size / 2**20:.0f} MiB, above the {limits.max_container_bytes / 2**20:.0f} MiB limit")
    with path.open("rb") as handle:
        head = handle.read(4)
        handle.seek(0)
        return _read_archive(handle, head, limits)


def read_zip_bytes(data: bytes, limits: ReadLimits = ReadLimits()) -> ExamStations:
    """Stations of one exam zip held in memory (tests, archives streamed from elsewhere)."""
    if len(data) > limits.max_container_bytes:
        raise ExamReadError(Stage.SAFETY, f"zip is {len(data) / 2**20:.0f} MiB, above the limit")
    return _read_archive(io.BytesIO(data), data[:4], limits)


def _read_archive(handle: io.BufferedIOBase | io.BytesIO, head: bytes, limits: ReadLimits) -> ExamStations:
    try:
        archive = zipfile.ZipFile(handle)
    except zipfile.BadZipFile as error:
        if head in _ZIP_SIGNATURES:
            raise ExamReadError(Stage.OPEN, f"truncated or corrupt zip archive ({error})") from error
        raise ExamReadError(Stage.OPEN, "not a zip archive") from error
    except (OSError, EOFError, ValueError) as error:
        raise ExamReadError(Stage.OPEN, f"unreadable zip archive ({error})") from error
    with archive:
        entries = checked_entries(archive, limits)
        return read_members(_members(archive, entries), container_errors=_MEMBER_ERRORS)


def is_unsafe_name(name: str) -> bool:
    """Absolute paths, drive letters and parent references could escape any extraction folder."""
    if name.startswith(("/", "\\")) or _DRIVE_PREFIX.match(name):
        return True
    return ".." in re.split(r"[\\/]", name)


def checked_entries(archive: zipfile.ZipFile, limits: ReadLimits) -> list[zipfile.ZipInfo]:
    """The file entries, after refusing unsafe names and absurd declared sizes."""
    entries = [info for info in archive.infolist() if not info.is_dir()]
    if len(entries) > limits.max_files:
        raise ExamReadError(Stage.SAFETY, f"zip holds {len(entries)} files, above the {limits.max_files} limit")
    total = 0
    for info in entries:
        if is_unsafe_name(info.filename):
            raise ExamReadError(Stage.SAFETY, f"unsafe member path {info.filename!r}")
        if info.file_size > limits.max_file_bytes:
            raise ExamReadError(
                Stage.SAFETY,
                f"member {info.filename!r} declares {info.file_size} bytes uncompressed, above the {limits.max_file_bytes} limit",
            )
        total += info.file_size
    if total > limits.max_total_bytes:
        raise ExamReadError(Stage.SAFETY, f"zip declares {total} bytes uncompressed in all, above the {limits.max_total_bytes} limit")
    return entries


def _members(archive: zipfile.ZipFile, entries: list[zipfile.ZipInfo]) -> Iterator[Member]:
    for info in entries:
        yield Member(
            name=info.filename,
            open_stream=lambda info=info: archive.open(info),
            read_bytes=lambda info=info: archive.read(info),
        )
