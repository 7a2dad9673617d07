"""UK Biobank field-20201 zips to water/fat stations, read in memory (nothing is extracted).

The archive is checked before anything is decompressed: unsafe member names and declared
sizes beyond `ReadLimits` are refused. The manifest is never read; DICOM headers decide.

Speed: the zip is read into memory once and stored or deflated members are decompressed
straight from those bytes (`_MemberStream`), with ISA-L's inflate when the `isal` package is
installed (about 1.7x zlib's speed here; inflating the water and fat members is a quarter of
compressing a deflated exam). CRC-32 and sizes are verified as zipfile would.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import BinaryIO

from mimir.imaging.cache import not_regular_reason
from mimir.imaging.dicom_series import Member, ReadLimits, read_members
from mimir.imaging.dixon_series import SeriesPatterns
from mimir.imaging.errors import ExamReadError, Stage
from mimir.imaging.station import ExamStations

logger = logging.getLogger(__name__)


def _inflate_library() -> ModuleType:
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib
    return isal_zlib


#: zlib, or the faster ISA-L with the same interface (raw deflate streams, CRC-32).
_INFLATE = _inflate_library()
_LOCAL_HEADER = struct.Struct("<4s22xHH")
_LOCAL_SIGNATURE = b"PK\x03\x04"
#: General-purpose flag bit of an encrypted member; zipfile refuses to open one without a password.
_ENCRYPTED = 0x1

_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
_DRIVE_PREFIX = re.compile(r"^[A-Za-z]:")
#: Failures of one member's bytes (bad CRC, broken deflate stream, truncated local data).
_MEMBER_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile, zlib.error, _INFLATE.error, EOFError, OSError, RuntimeError, NotImplementedError,
)


def read_zip(path: str | Path, limits: ReadLimits = ReadLimits(), patterns: SeriesPatterns = SeriesPatterns()) -> ExamStations:
    """Stations of one exam zip on disk; `patterns` name the water and fat series where
    dixon_series' built-in rules do not."""
    path = Path(path)
    if not path.exists():
        raise ExamReadError(Stage.OPEN, f"no such zip file: {path}")
    unreadable = not_regular_reason(path)
    if unreadable is not None:
        raise ExamReadError(Stage.OPEN, f"{path}: {unreadable}")
    size = path.stat().st_size
    if size > limits.max_container_bytes:
        raise ExamReadError(Stage.SAFETY, f"zip is {size / 2**20:.0f} MiB, above the {limits.max_container_bytes / 2**20:.0f} MiB limit")
    data = path.read_bytes()
    return _read_archive(io.BytesIO(data), data[:4], limits, memoryview(data), patterns)


def read_zip_bytes(data: bytes, limits: ReadLimits = ReadLimits(), patterns: SeriesPatterns = SeriesPatterns()) -> ExamStations:
    """Stations of one exam zip held in memory (tests, archives streamed from elsewhere)."""
    if len(data) > limits.max_container_bytes:
        raise ExamReadError(Stage.SAFETY, f"zip is {len(data) / 2**20:.0f} MiB, above the limit")
    return _read_archive(io.BytesIO(data), data[:4], limits, memoryview(data), patterns)


def _read_archive(handle: io.BytesIO, head: bytes, limits: ReadLimits, data: memoryview, patterns: SeriesPatterns) -> ExamStations:
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
        encrypted = sum(bool(info.flag_bits & _ENCRYPTED) for info in entries)
        if entries and encrypted == len(entries):
            raise ExamReadError(
                Stage.OPEN, f"all {encrypted} members are encrypted (a password-protected zip); MIMIR reads unencrypted zips"
            )
        return read_members(_members(archive, entries, data), container_errors=_MEMBER_ERRORS, patterns=patterns)


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


def _members(archive: zipfile.ZipFile, entries: list[zipfile.ZipInfo], data: memoryview) -> Iterator[Member]:
    """Stored and deflated members are read from `data` directly; anything else (encrypted,
    bzip2, lzma) through zipfile."""
    for info in entries:
        if info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) and not info.flag_bits & _ENCRYPTED:
            open_stream: Callable[[], BinaryIO] = partial(_MemberStream, info, data)
        else:
            open_stream = partial(archive.open, info)
        yield Member(name=info.filename, open_stream=open_stream, read_bytes=partial(_read_all, open_stream))


def _read_all(open_stream: Callable[[], BinaryIO]) -> bytes:
    with open_stream() as stream:
        return stream.read()


class _MemberStream(io.RawIOBase):
    """One member read from the archive's bytes: stored slices or an inflate stream.

    Reads never return more than the declared size; reaching it checks the CRC-32 and that
    the data end there, so a corrupt or tampered member fails as it would in zipfile.
    """

    def __init__(self, info: zipfile.ZipInfo, archive: memoryview) -> None:
        super().__init__()
        self._info = info
        start = _data_start(archive, info)
        self._compressed = archive[start : start + info.compress_size]
        if len(self._compressed) < info.compress_size:
            raise zipfile.BadZipFile(f"{info.filename}: member data truncated")
        self._inflater = _INFLATE.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
        self._pending: bytes | memoryview = self._compressed
        self._produced = 0
        self._crc = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        remaining = self._info.file_size - self._produced
        if remaining <= 0:
            return b""
        wanted = remaining if size is None or size < 0 else min(size, remaining)
        if self._inflater is None:
            chunk = bytes(self._compressed[self._produced : self._produced + wanted])
        else:
            chunk = self._inflater.decompress(self._pending, wanted)
            self._pending = self._inflater.unconsumed_tail
        if len(chunk) < wanted:
            raise zipfile.BadZipFile(f"{self._info.filename}: data end before the declared {self._info.file_size} bytes")
        self._produced += len(chunk)
        self._crc = _INFLATE.crc32(chunk, self._crc)
        if self._produced == self._info.file_size:
            self._check_end()
        return chunk

    def _check_end(self) -> None:
        if self._inflater is not None and (self._inflater.decompress(self._pending, 1) or self._inflater.unconsumed_tail):
            raise zipfile.BadZipFile(f"{self._info.filename}: more data than the declared {self._info.file_size} bytes")
        if self._crc != self._info.CRC:
            raise zipfile.BadZipFile(f"Bad CRC-32 for file {self._info.filename!r}")


def _data_start(archive: memoryview, info: zipfile.ZipInfo) -> int:
    """Where a member's data begin: after its local header, whose name and extra field lengths
    may differ from the central directory's."""
    header = archive[info.header_offset : info.header_offset + _LOCAL_HEADER.size]
    if len(header) < _LOCAL_HEADER.size:
        raise zipfile.BadZipFile(f"{info.filename}: local header truncated")
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    if signature != _LOCAL_SIGNATURE:
        raise zipfile.BadZipFile(f"{info.filename}: bad local header signature")
    return info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
