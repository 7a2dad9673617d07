"""DICOM files to paired water/fat stations: the logic shared by zip and folder readers.

Readers hand over `Member`s (a name plus ways to open or read the bytes); this module decides
from headers alone which files matter (water and fat series, classified by dixon_series),
decodes only those, and assembles them into head-to-foot `Station`s, repairing what it can and
noting all of it. The header values come from `dicom_scan` (its fast walk, else pydicom).
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag

from mimir.imaging.dicom_scan import (
    LAST_SLICE_TAG,
    PEEKED,
    PIXEL_DATA,
    SERIES_NUMBER,
    WANTED,
    Scan,
    could_be_dicom,
    resume_scan,
    scan_header,
    values_from_dataset,
)
from mimir.imaging.dixon_series import FAT, WATER, SeriesCensus, SeriesPatterns, both_reason, classify, series_key
from mimir.imaging.errors import ExamReadError, Stage
from mimir.imaging.header_limits import (
    MAX_EXAM_BYTES,
    MAX_SERIES_SLICES,
    TAGS,
    pixel_spacing,
    position_problem,
    slice_header_problem,
    slice_spacing_problem,
)
from mimir.imaging.station import ExamStations, Station
from mimir.protocol import GRID_SLICE_SPACING_MM, PIXEL_SPACING_MM

logger = logging.getLogger(__name__)

_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
#: Bytes decompressed to classify a file by its header (groups 0008 and 0020 come first).
_PEEK_BYTES = 8192
#: Bytes pydicom may parse for a header: the tags read (up to RescaleSlope) lie in the first
#: few kilobytes of real files, and pydicom walks any bytes it is given (~0.4 s per MiB of
#: zeros), so a crafted file costs at most this much of it.
_MAX_HEADER_BYTES = 2**20
_AXIAL_ORIENTATION = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
_ORIENTATION_TOLERANCE = 1e-3
#: Positions closer than this share a slice (DICOM writes positions to ~1e-6 mm).
_POSITION_TOLERANCE_MM = 0.1
#: A series with fewer decodable slices than this share is unreadable, not repairable.
_MIN_DECODED_SHARE = 0.5
#: Two series of one contrast covering more than this share of the shorter one are one station.
_DUPLICATE_OVERLAP = 0.5


@dataclass(frozen=True)
class ReadLimits:
    """Sanity limits checked before anything is decompressed (zip bombs, runaway inputs).

    A real field-20201 exam holds ~1,300 files of ~90 kB (~120 MB uncompressed).
    """

    max_files: int = 20_000
    max_file_bytes: int = 64 * 2**20
    max_total_bytes: int = 2 * 2**30
    max_container_bytes: int = 2 * 2**30


@dataclass(frozen=True)
class Member:
    """One file of an exam, wherever it lives; `open_stream` allows reading only a header."""

    name: str
    open_stream: Callable[[], BinaryIO]
    read_bytes: Callable[[], bytes]


@dataclass
class _PixelSource:
    """What decoding one slice needs, held from its header read until the exam's memory is checked."""

    values: dict[str, object]
    data: bytes
    offset: int | None


@dataclass
class _Slice:
    """One water/fat slice with the header facts assembly needs, its pixels once decoded.

    `pixels` is None for an unusable slice; `problem` then says why (a header value outside
    header_limits, or the decoder's complaint), and `header_problem` which of the two it is.
    """

    member: str
    contrast: str
    series_key: str
    description: str
    number: int
    time: str
    position: np.ndarray
    orientation: np.ndarray | None
    #: None when PixelSpacing is absent: the series supplies it or the exam is refused.
    spacing: tuple[float, float] | None
    shape: tuple[int, int]
    pixels: np.ndarray | None = None
    problem: str | None = None
    header_problem: bool = False
    source: _PixelSource | None = None

    @property
    def placed(self) -> bool:
        """Whether the slice has a usable position (one that has none is all NaN, and dropped)."""
        return not math.isnan(self.position[2])


@dataclass
class _Series:
    """One series as a regular z-ordered volume, head to foot."""

    contrast: str
    description: str
    number: int
    time: str
    volume: np.ndarray
    positions: np.ndarray
    spacing: tuple[float, float]
    regular: bool
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return _label(self.description, self.number)

    @property
    def slice_spacing(self) -> float:
        if len(self.positions) < 2:
            return 0.0
        return float(np.median(-np.diff(self.positions[:, 2])))

    def z_extent(self) -> tuple[float, float]:
        half = self.slice_spacing / 2
        return float(self.positions[-1, 2]) - half, float(self.positions[0, 2]) + half


@dataclass
class _Collected:
    slices: list[_Slice] = field(default_factory=list)
    dicom_files: int = 0
    skipped_files: int = 0
    container_failures: int = 0
    #: "member: error" of the first member the container could not deliver.
    first_failure: str = ""
    lenient_reads: int = 0
    #: Bytes of water/fat files held for decoding.
    held_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    patterns: SeriesPatterns = field(default_factory=SeriesPatterns)
    #: Every DICOM image's series, water/fat or not, for the reason when no pair is found.
    census: SeriesCensus = field(default_factory=SeriesCensus)


def read_members(
    members: Iterable[Member],
    container_errors: tuple[type[BaseException], ...] = (OSError,),
    patterns: SeriesPatterns = SeriesPatterns(),
) -> ExamStations:
    """Classify, decode and assemble the members of one exam.

    `container_errors` are the exceptions that mean a member's bytes could not be fetched
    (a corrupt zip entry, an unreadable file): such members are skipped and noted. `patterns`
    name the water and fat series where the built-in rules of dixon_series do not.
    """
    collected = _Collected(patterns=patterns)
    total = 0
    for member in members:
        total += 1
        _collect_member(member, collected, container_errors)
    if total and collected.container_failures == total:
        raise ExamReadError(Stage.OPEN, f"none of the {total} files could be read from the container (first: {collected.first_failure})")
    _require_water_and_fat(collected, total)
    if collected.lenient_reads:
        collected.notes.append(f"{collected.lenient_reads} files needed a lenient (forced) DICOM read")
    check_memory(collected.slices, collected.held_bytes)
    for slice_ in collected.slices:
        _decode(slice_)
    return assemble(collected)


def check_memory(slices: list[_Slice], held_bytes: int) -> None:
    """Refuse an exam whose arrays would exceed MAX_EXAM_BYTES, estimated from headers alone.

    Counted: the water/fat files held, two float32 copies of every slice (decoded pixels or
    filled gaps, and the series volume) and the fused water and fat grids twice (the grid and
    the projection's temporaries), the grid spanning every placed water slice.
    """
    placed = [slice_ for slice_ in slices if slice_.problem is None]
    slice_bytes = sum(2 * 4 * slice_.shape[0] * slice_.shape[1] for slice_ in placed)
    grid_bytes = 2 * 2 * 4 * _grid_voxels([slice_ for slice_ in placed if slice_.contrast == WATER])
    total = held_bytes + slice_bytes + grid_bytes
    if total > MAX_EXAM_BYTES:
        raise ExamReadError(
            Stage.SAFETY,
            f"{len(placed)} water/fat slices (Rows x Columns up to {max((s.shape for s in placed), default=(0, 0))}) need about "
            f"{total / 2**20:.0f} MiB, above the {MAX_EXAM_BYTES / 2**20:.0f} MiB memory budget per exam",
        )


def _grid_voxels(waters: list[_Slice]) -> int:
    """Voxels of the fused grid the slices' positions, sizes and spacings span."""
    if not waters:
        return 0
    positions = np.array([slice_.position for slice_ in waters])
    spacings = np.array([slice_.spacing or (PIXEL_SPACING_MM, PIXEL_SPACING_MM) for slice_ in waters])
    shapes = np.array([slice_.shape for slice_ in waters])
    x_end = positions[:, 0] + shapes[:, 1] * spacings[:, 1]
    y_end = positions[:, 1] + shapes[:, 0] * spacings[:, 0]
    columns = (x_end.max() - positions[:, 0].min()) / PIXEL_SPACING_MM + 1
    rows = (y_end.max() - positions[:, 1].min()) / PIXEL_SPACING_MM + 1
    slices = (positions[:, 2].max() - positions[:, 2].min()) / GRID_SLICE_SPACING_MM + 2
    return int(columns * rows * slices)


def _decode(slice_: _Slice) -> None:
    """Decode a slice held by `_collect_member`, then let go of its file's bytes."""
    source = slice_.source
    if source is None:
        return
    slice_.source = None
    slice_.pixels, problem = _decode_pixels(slice_.member, source.values, source.data, slice_.shape, source.offset)
    if problem is not None:
        slice_.problem = problem


def _collect_member(member: Member, collected: _Collected, container_errors: tuple[type[BaseException], ...]) -> None:
    """Classify by a header prefix, then read the rest of the same stream only for water/fat.

    One stream per member: reopening a zip entry to read it whole costs a second local-header
    parse and decompressing the prefix twice.
    """
    try:
        with member.open_stream() as stream:
            head = stream.read(_PEEK_BYTES)
            if not could_be_dicom(head):
                collected.skipped_files += 1
                return
            peek = scan_header(head, last_tag=SERIES_NUMBER)
            header = _peek_header(member, peek)
            contrast = None
            if header is not None:
                if not _is_image(header):
                    collected.skipped_files += 1
                    return
                contrast = _count_image(member.name, header, collected)
                if contrast is None:
                    return
            data = head + stream.read()
    except container_errors as error:
        failure = " ".join(f"{type(error).__name__}: {error}".split())
        collected.container_failures += 1
        collected.skipped_files += 1
        collected.first_failure = collected.first_failure or f"{member.name}: {failure}"
        collected.notes.append(f"{member.name}: unreadable ({failure}), skipped")
        return
    resume = peek if peek is not None and peek.complete else None
    parsed = _parse_header(member.name, data, strict_header_ok=header is not None, resume=resume)
    if parsed is None or (header is None and not _is_image(parsed[0])):
        _skip_unreadable(member.name, header, collected)
        return
    values, pixel_offset, lenient = parsed
    if header is None:
        if lenient:
            collected.lenient_reads += 1
        contrast = _count_image(member.name, values, collected)
        if contrast is None:
            return
    try:
        slice_ = _slice_from_values(member.name, values, data, pixel_offset, contrast)
    except (TypeError, ValueError, IndexError, KeyError):
        logger.debug("header values unusable in %s", member.name, exc_info=True)
        _skip_unreadable(member.name, values, collected)
        return
    collected.slices.append(slice_)
    if slice_.source is not None:
        collected.held_bytes += len(data)
        if collected.held_bytes > MAX_EXAM_BYTES:
            raise ExamReadError(Stage.SAFETY, f"water/fat files hold more than the {MAX_EXAM_BYTES / 2**20:.0f} MiB memory budget per exam")


def _skip_unreadable(name: str, header: dict[str, object] | None, collected: _Collected) -> None:
    """Skip a file whose header cannot be used; noted when it was classified as water or fat."""
    collected.skipped_files += 1
    if header is not None:
        label = header.get("SeriesDescription") or f"series #{header.get('SeriesNumber', 0)}"
        collected.notes.append(f"{name}: {label} header unreadable, skipped")


def _is_image(values: dict[str, object]) -> bool:
    """Whether a parsed header belongs to an image series (not a DICOMDIR or a forced read of
    other bytes): it names a series or an image type."""
    return any(keyword in values for keyword in ("SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "ImageType"))


def _count_image(name: str, values: dict[str, object], collected: _Collected) -> str | None:
    """Count one DICOM image in the census; its contrast ('W', 'F') or None when neither."""
    contrast = classify(values, collected.patterns)
    if contrast is not None and len(contrast) > 1:
        raise ExamReadError(Stage.SERIES, f"{_series_label(values)} (file {name}) {both_reason(collected.patterns)}")
    collected.dicom_files += 1
    collected.census.add(values, contrast)
    return contrast


def _series_label(values: dict[str, object]) -> str:
    """How a refusal names a series: its description (or its number, when it has none)."""
    description = str(values.get("SeriesDescription", ""))
    return f"series {description!r} #{values.get('SeriesNumber', 0)}" if description else f"series #{values.get('SeriesNumber', 0)}"


def _past_series_number(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag > SERIES_NUMBER


def _past_slice_tags(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag > LAST_SLICE_TAG


def _peek_header(member: Member, scan: Scan | None) -> dict[str, object] | None:
    """The classifying header values from the scan of a file's first bytes, else from pydicom,
    else None (the file then gets the full, lenient read).

    Only a prefix is decompressed, so in-phase/opposed-phase files cost a few kilobytes.
    """
    if scan is not None and scan.complete:
        return scan.values
    with member.open_stream() as stream:
        try:
            prefix = io.BytesIO(stream.read(_MAX_HEADER_BYTES))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dataset = read_partial(prefix, stop_when=_past_series_number, specific_tags=list(PEEKED))
            return values_from_dataset(dataset, PEEKED)
        except Exception:  # noqa: BLE001 - any parse failure sends the file to the lenient path
            logger.debug("header peek failed for %s", member.name, exc_info=True)
            return None


def _parse_header(name: str, data: bytes, strict_header_ok: bool, resume: Scan | None = None) -> tuple[dict[str, object], int | None, bool] | None:
    """(header values, where uncompressed pixels start, lenient read used), or None when not a DICOM file.

    `resume` is a complete scan of a prefix of `data`: the walk goes on where it stopped.
    """
    scan = scan_header(data, last_tag=PIXEL_DATA) if resume is None else resume_scan(data, resume, last_tag=PIXEL_DATA)
    if scan is not None and scan.complete and scan.pixel_offset is not None:
        return scan.values, scan.pixel_offset, False
    header = _pydicom_header(name, data, strict_header_ok)
    if header is None:
        return None
    dataset, lenient = header
    try:
        values = values_from_dataset(dataset, WANTED)
        return values, _pixel_offset_at_end(dataset, values, data), lenient
    except Exception:  # noqa: BLE001 - malformed header values make the file unusable
        logger.debug("header values unusable in %s", name, exc_info=True)
        return None


def _pydicom_header(name: str, data: bytes, strict_header_ok: bool) -> tuple[Dataset, bool] | None:
    """(header, lenient) read by pydicom, strictly first, then forced; None if neither parses."""
    try:
        return _read_header(data, force=False), False
    except Exception:  # noqa: BLE001 - strict failures of any kind get the lenient read
        if strict_header_ok:
            logger.debug("strict header read failed for %s", name, exc_info=True)
    try:
        return _read_header(data, force=True), True
    except Exception:  # noqa: BLE001
        logger.debug("lenient header read failed for %s", name, exc_info=True)
        return None


def _read_header(data: bytes, force: bool) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prefix = io.BytesIO(memoryview(data)[:_MAX_HEADER_BYTES])
        return read_partial(prefix, stop_when=_past_slice_tags, force=force, specific_tags=list(WANTED))


def _slice_from_values(name: str, values: dict[str, object], data: bytes, pixel_offset: int | None, contrast: str) -> _Slice:
    """The water or fat slice a header describes, its pixels to be decoded. A header outside
    header_limits gives an unusable slice that keeps its series' count (and its place, when
    its position is sound) but is never decoded."""
    description = str(values.get("SeriesDescription", ""))
    number = int(values.get("SeriesNumber", 0))  # type: ignore[call-overload]
    problem = slice_header_problem(values)
    position = values.get("ImagePositionPatient") if problem is None or position_problem(values) is None else [math.nan] * 3
    orientation = values.get("ImageOrientationPatient")
    shape = (int(values.get("Rows", 0)), int(values.get("Columns", 0)))  # type: ignore[call-overload]
    return _Slice(
        member=name,
        contrast=contrast,
        series_key=series_key(values),
        description=description,
        number=number,
        time=str(values.get("SeriesTime", "")),
        position=np.array(position, dtype=np.float64),
        orientation=None if orientation is None or problem is not None else np.array(orientation, dtype=np.float64),
        spacing=None if problem is not None else pixel_spacing(values),
        shape=shape,
        problem=problem,
        header_problem=problem is not None,
        source=None if problem is not None else _PixelSource(values, data, pixel_offset),
    )


def _decode_pixels(
    name: str, values: dict[str, object], data: bytes, shape: tuple[int, int], offset: int | None
) -> tuple[np.ndarray | None, str | None]:
    """(pixel values, None), or (None, why not): uncompressed bytes straight into numpy,
    anything else through pydicom.

    Unscaled 8/16-bit pixels stay a view of the file's bytes (every such value is exact in
    float32): the station volume converts them as it copies them in, sparing a float32 copy
    per slice. Everything else is float32 here, and checked finite: a NaN must never reach
    the uint8 image through an undefined cast.
    """
    try:
        raw = _uncompressed_pixels(values, data, shape, offset)
        simple = raw is not None
        if raw is None:
            raw = _pixels_via_pydicom(data)
        if raw.shape != shape:
            return None, f"pixel data of shape {raw.shape}, not the header's {shape}"
        slope = values.get("RescaleSlope", [1.0])[0]  # type: ignore[index]
        intercept = values.get("RescaleIntercept", [0.0])[0]  # type: ignore[index]
        if slope != 1.0 or intercept != 0.0:
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is caught below
                pixels = raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        elif simple:
            return raw, None
        else:
            pixels = raw.astype(np.float32)
        if not np.isfinite(pixels).all():
            return None, f"non-finite pixel values (RescaleSlope {TAGS['RescaleSlope']} {slope:g}, RescaleIntercept {intercept:g})"
        return pixels, None
    except Exception as error:  # noqa: BLE001 - an undecodable slice is repaired later, not fatal
        logger.debug("pixel data undecodable in %s", name, exc_info=True)
        return None, " ".join(f"{type(error).__name__}: {error}".split())


def _pixel_layout(values: dict[str, object]) -> tuple[np.dtype, int] | None:
    """(little-endian dtype, bytes per pixel) of single-frame greyscale 8/16-bit pixels, else None."""
    if int(values.get("SamplesPerPixel", 1)) != 1 or int(values.get("NumberOfFrames", 1)) != 1:  # type: ignore[call-overload]
        return None
    bits = int(values.get("BitsAllocated", 16))  # type: ignore[call-overload]
    if bits not in (8, 16):
        return None
    signed = int(values.get("PixelRepresentation", 0)) == 1  # type: ignore[call-overload]
    return np.dtype(f"<{'i' if signed else 'u'}{bits // 8}"), bits // 8


def _uncompressed_pixels(values: dict[str, object], data: bytes, shape: tuple[int, int], offset: int | None) -> np.ndarray | None:
    layout = _pixel_layout(values)
    if layout is None or offset is None:
        return None
    dtype, width = layout
    count = shape[0] * shape[1]
    if offset + count * width > len(data):
        return None
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)


def _pixel_offset_at_end(header: Dataset, values: dict[str, object], data: bytes) -> int | None:
    """Where uncompressed little-endian pixels start when PixelData is the file's last element.

    Verified against the element header just before them; None sends decoding to pydicom.
    """
    meta = getattr(header, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    implicit, little = header.original_encoding
    if syntax is not None:
        if syntax.is_compressed:
            return None
        implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
    layout = _pixel_layout(values)
    if layout is None or not little or "Rows" not in values or "Columns" not in values:
        return None
    size = int(values["Rows"]) * int(values["Columns"]) * layout[1]  # type: ignore[call-overload]
    stored = size + size % 2
    start = len(data) - stored
    length = stored.to_bytes(4, "little")
    headers = [_PIXEL_DATA_TAG + length] if implicit else [_PIXEL_DATA_TAG + vr + b"\x00\x00" + length for vr in (b"OW", b"OB")]
    for element in headers:
        if start >= len(element) and data[start - len(element) : start] == element:
            return start
    return None


def _pixels_via_pydicom(data: bytes) -> np.ndarray:
    """The general decoder (compressed syntaxes, odd layouts), strict then forced.

    Raises the strict read's error when both fail: it names the transfer syntax and the
    missing decoder (a JPEG-LS file without pyjpegls), where the forced read's would not.
    """
    first: Exception | None = None
    for force in (False, True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dataset = pydicom.dcmread(io.BytesIO(data), force=force)
                return np.asarray(dataset.pixel_array)
        except Exception as error:  # noqa: BLE001 - try the next, more lenient, way
            logger.debug("pydicom decode failed (force=%s)", force, exc_info=True)
            first = first or error
    assert first is not None
    raise first


def _require_water_and_fat(collected: _Collected, total_files: int) -> None:
    """Refuse an exam without DICOM images, or without water or fat series, before anything
    is decoded; the reason lists the series the exam holds instead."""
    if collected.dicom_files == 0:
        raise ExamReadError(Stage.DICOM, f"no DICOM image files among {total_files} files")
    found = {slice_.contrast for slice_ in collected.slices}
    missing = [contrast for contrast in (WATER, FAT) if contrast not in found]
    if missing:
        raise ExamReadError(Stage.SERIES, collected.census.missing_reason(missing, collected.skipped_files, collected.patterns))


def assemble(collected: _Collected) -> ExamStations:
    """Group decoded slices into series, drop duplicates, pair water with fat, sort head to foot
    (`read_members` made sure that both contrasts are there)."""
    notes = list(collected.notes)
    groups: dict[tuple[str, str], list[_Slice]] = {}
    for slice_ in collected.slices:
        groups.setdefault((slice_.contrast, slice_.series_key), []).append(slice_)
    by_contrast: dict[str, list[_Series]] = {WATER: [], FAT: []}
    for (contrast, _), slices in sorted(groups.items(), key=lambda item: item[0]):
        by_contrast[contrast].append(build_series(slices))
    dropped = 0
    for contrast in (WATER, FAT):
        kept, dropped_series = _drop_duplicates(by_contrast[contrast])
        by_contrast[contrast] = kept
        dropped += len(dropped_series)
        notes.extend(dropped_series)
    stations = [pair_station(water, fat) for water, fat in _pair_series(by_contrast[WATER], by_contrast[FAT])]
    stations.sort(key=lambda station: station.top_z, reverse=True)
    for station in stations:
        notes.extend(station.notes)
    return ExamStations(stations=stations, notes=notes, duplicates_dropped=dropped, skipped_files=collected.skipped_files)


def build_series(slices: list[_Slice]) -> _Series:
    """One series' slices as a head-to-foot volume; corrupt, unusable and missing slices
    interpolated, slices without a usable position dropped, all of it noted."""
    first = slices[0]
    label = _label(first.description, first.number)
    notes: list[str] = []
    usable = [s for s in slices if s.pixels is not None]
    _check_axial(usable, label)
    spacing = _series_spacing(usable, label, len(slices), notes)
    shape = _majority([s.shape for s in usable]) if usable else first.shape
    for slice_ in usable:
        if slice_.shape != shape or not _close_spacing(slice_.spacing or spacing, spacing):
            notes.append(f"{label}: slice {slice_.member} has size {slice_.shape} unlike {shape}, treated as corrupt")
            slice_.pixels = None
    for slice_ in slices:
        if not slice_.placed:
            notes.append(f"{label}: slice {slice_.member} dropped: {slice_.problem}")
    ordered = sorted((s for s in slices if s.placed), key=lambda s: (-s.position[2], s.pixels is None))
    unique: list[_Slice] = []
    for slice_ in ordered:
        if unique and abs(unique[-1].position[2] - slice_.position[2]) < _POSITION_TOLERANCE_MM:
            notes.append(f"{label}: two slices at z={slice_.position[2]:.2f}, kept one")
            continue
        unique.append(slice_)
    dropped = len(ordered) - len(unique)
    decoded = [s for s in unique if s.pixels is not None]
    if len(decoded) < max(1, _MIN_DECODED_SHARE * (len(slices) - dropped)):
        raise _too_few_usable(label, [s for s in slices if s.pixels is None], len(slices) - dropped)
    for slice_ in unique:
        if slice_.pixels is None:
            detail = f" ({slice_.problem})" if slice_.header_problem else ""
            notes.append(f"{label}: slice {slice_.member} at z={slice_.position[2]:.2f} has unreadable pixel data{detail}")
    volume, positions, regular = _regular_volume(unique, shape, label, notes)
    return _Series(
        contrast=first.contrast,
        description=first.description,
        number=first.number,
        time=max(s.time for s in slices),
        volume=volume,
        positions=positions,
        spacing=spacing,
        regular=regular,
        notes=notes,
    )


def _series_spacing(usable: list[_Slice], label: str, total: int, notes: list[str]) -> tuple[float, float]:
    """The series' PixelSpacing: its slices' majority, also for slices that lack the tag
    (one acquisition has one spacing; noted). Never a guess: none at all refuses the exam."""
    given = [s.spacing for s in usable if s.spacing is not None]
    if not given:
        if not usable:
            return (math.nan, math.nan)
        scope = f"all {total} slices" if len(usable) == total else f"all {len(usable)} usable of {total} slices"
        raise ExamReadError(Stage.HEADER, f"{label}: PixelSpacing {TAGS['PixelSpacing']} missing in {scope}")
    spacing: tuple[float, float] = _majority(given)  # type: ignore[assignment]
    lacking = len(usable) - len(given)
    if lacking:
        notes.append(
            f"{label}: PixelSpacing {TAGS['PixelSpacing']} missing in {lacking} of {total} slices, "
            f"taken as the [{spacing[0]:g}, {spacing[1]:g}] mm of the others"
        )
    return spacing


def _too_few_usable(label: str, unusable: list[_Slice], total: int) -> ExamReadError:
    """The refusal of a series with too few usable slices, quoting the first slice's problem."""
    first = next((s for s in unusable if s.problem), None)
    example = f" (first: {first.member}: {first.problem})" if first is not None else ""
    headers = sum(s.header_problem for s in unusable)
    if headers * 2 >= len(unusable):
        return ExamReadError(Stage.HEADER, f"{label}: unusable header in {headers} of {total} slices{example}")
    return ExamReadError(Stage.PIXELS, f"{label}: pixel data unreadable in {len(unusable)} of {total} slices{example}")


def _close_spacing(spacing: tuple[float, float], reference: tuple[float, float]) -> bool:
    """np.allclose(spacing, reference, atol=1e-4), skipped for the usual identical pair."""
    return spacing == reference or bool(np.allclose(spacing, reference, atol=1e-4))


def _majority(values: list) -> object:
    counts: dict[object, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return max(counts, key=lambda value: counts[value])


def _label(description: str, number: int) -> str:
    """How notes and refusals name a series ("Dixon_BH_17s_W #14", "series #3" without a description)."""
    return f"{description or 'series'} #{number}"


def _check_axial(slices: list[_Slice], label: str) -> None:
    """Refuse the first slice whose orientation is not axial; all slices compared at once."""
    oriented = [slice_ for slice_ in slices if slice_.orientation is not None]
    if oriented and all(slice_.orientation.shape == (6,) for slice_ in oriented):  # type: ignore[union-attr]
        orientations = np.stack([slice_.orientation for slice_ in oriented])  # type: ignore[misc]
        if np.isclose(orientations, _AXIAL_ORIENTATION, atol=_ORIENTATION_TOLERANCE).all():
            return
    for slice_ in oriented:
        assert slice_.orientation is not None
        if slice_.orientation.shape != (6,) or not np.allclose(slice_.orientation, _AXIAL_ORIENTATION, atol=_ORIENTATION_TOLERANCE):
            raise ExamReadError(
                Stage.GEOMETRY,
                f"{label}: ImageOrientationPatient {np.round(slice_.orientation, 3).tolist()} is not axial (1,0,0,0,1,0)",
            )


def _regular_volume(unique: list[_Slice], shape: tuple[int, int], label: str, notes: list[str]) -> tuple[np.ndarray, np.ndarray, bool]:
    """Place slices on a regular z grid, filling gaps and corrupt slices from their neighbours.

    Filling keeps every station regular (one spacing, no holes) so fusion can copy it onto the
    grid; each filled slice is noted. Irregular spacing is left as is (fusion resamples by position).
    """
    z = np.array([s.position[2] for s in unique])
    if len(unique) < 2:
        return _stack_decoded(unique, shape), np.array([s.position for s in unique]), True
    steps = -np.diff(z)
    spacing = float(np.median(steps))
    problem = slice_spacing_problem(spacing)
    if problem is not None:
        raise ExamReadError(Stage.GEOMETRY, f"{label}: {problem}")
    grid_index = np.round((z[0] - z) / spacing).astype(int)
    regular = spacing > 0 and bool(np.all(np.abs(z[0] - grid_index * spacing - z) < max(_POSITION_TOLERANCE_MM, 0.05 * spacing)))
    if not regular:
        notes.append(f"{label}: irregular slice spacing (steps {np.round(steps.min(), 2)} to {np.round(steps.max(), 2)} mm), kept as acquired")
        kept = [s for s in unique if s.pixels is not None]
        return _stack_decoded(kept, shape), np.array([s.position for s in kept]), False
    count = int(grid_index[-1]) + 1
    decoded = sum(s.pixels is not None for s in unique)
    if count > MAX_SERIES_SLICES or decoded < _MIN_DECODED_SHARE * count:
        raise ExamReadError(
            Stage.GEOMETRY,
            f"{label}: ImagePositionPatient {TAGS['ImagePositionPatient']} z from {z[0]:g} to {z[-1]:g} mm spans {count} slices "
            f"of {spacing:.2f} mm, {decoded} of them readable (at most {MAX_SERIES_SLICES}, at least half readable)",
        )
    volume = np.empty((count, *shape), dtype=np.float32)
    have = np.zeros(count, dtype=bool)
    for index, slice_ in zip(grid_index, unique, strict=True):
        if slice_.pixels is not None:
            volume[index] = slice_.pixels
            have[index] = True
    positions = np.repeat(unique[0].position[None, :], count, axis=0)
    positions[:, 2] = z[0] - np.arange(count) * spacing
    for index, slice_ in zip(grid_index, unique, strict=True):
        positions[index] = slice_.position
    missing = np.flatnonzero(~have)
    if missing.size:
        _interpolate_missing(volume, have)
        absent = count - len(unique)
        if absent:
            notes.append(f"{label}: {absent} slices missing from the z positions (gap larger than the {spacing:.2f} mm spacing)")
        notes.append(
            f"{label}: {missing.size} slices filled by linear interpolation of their neighbours "
            f"at z={', '.join(f'{positions[i, 2]:.2f}' for i in missing)}"
        )
    return volume, positions, True


def _stack_decoded(slices: list[_Slice], shape: tuple[int, int]) -> np.ndarray:
    return np.stack([s.pixels for s in slices if s.pixels is not None]).astype(np.float32, copy=False).reshape(-1, *shape)


def _interpolate_missing(volume: np.ndarray, have: np.ndarray) -> None:
    """Linear interpolation along z between the nearest present slices; ends copy their neighbour."""
    present = np.flatnonzero(have)
    for index in np.flatnonzero(~have):
        after = present[np.searchsorted(present, index)] if index < present[-1] else None
        before = present[np.searchsorted(present, index) - 1] if index > present[0] else None
        if before is None:
            volume[index] = volume[after]
        elif after is None:
            volume[index] = volume[before]
        else:
            weight = (index - before) / (after - before)
            volume[index] = (1 - weight) * volume[before] + weight * volume[after]


def _overlap_share(first: _Series, second: _Series) -> float:
    low_a, high_a = first.z_extent()
    low_b, high_b = second.z_extent()
    overlap = min(high_a, high_b) - max(low_a, low_b)
    shorter = min(high_a - low_a, high_b - low_b)
    if shorter <= 0:
        return 1.0 if abs(first.positions[0, 2] - second.positions[0, 2]) < _POSITION_TOLERANCE_MM else 0.0
    return max(0.0, overlap) / shorter


def _drop_duplicates(series: list[_Series]) -> tuple[list[_Series], list[str]]:
    """Keep the most recent series (SeriesTime, then SeriesNumber) of each position."""
    latest_first = sorted(series, key=lambda s: (s.time, s.number), reverse=True)
    kept: list[_Series] = []
    notes: list[str] = []
    for candidate in latest_first:
        newer = next((s for s in kept if _overlap_share(s, candidate) > _DUPLICATE_OVERLAP), None)
        if newer is None:
            kept.append(candidate)
        else:
            notes.append(
                f"duplicate station: dropped {candidate.label} (SeriesTime {candidate.time or '?'}), "
                f"kept {newer.label} (SeriesTime {newer.time or '?'})"
            )
    return kept, notes


def _pair_series(waters: list[_Series], fats: list[_Series]) -> list[tuple[_Series, _Series]]:
    """Match each water series with the fat series covering the same z range."""
    pairs: list[tuple[_Series, _Series]] = []
    unused = list(fats)
    for water in sorted(waters, key=lambda s: -s.positions[0, 2]):
        best = max(unused, key=lambda fat: (_overlap_share(water, fat), _same_stem(water, fat)), default=None)
        if best is None or _overlap_share(water, best) <= _DUPLICATE_OVERLAP:
            raise ExamReadError(Stage.PAIRING, f"water series {water.label} at z={water.positions[0, 2]:.1f} has no fat series at its position")
        unused.remove(best)
        pairs.append((water, best))
    if unused:
        labels = ", ".join(f.label for f in unused)
        raise ExamReadError(Stage.PAIRING, f"fat series {labels} has no water series at its position")
    return pairs


def _same_stem(water: _Series, fat: _Series) -> bool:
    return water.description.rsplit("_", 1)[0] == fat.description.rsplit("_", 1)[0]


def pair_station(water: _Series, fat: _Series) -> Station:
    """One station from matched series: common slices, common in-plane field of view."""
    notes = [*water.notes, *fat.notes]
    label = f"{water.label}/{fat.label}"
    if not np.allclose(water.spacing, fat.spacing, rtol=1e-3):
        raise ExamReadError(Stage.PAIRING, f"{label}: pixel spacing differs ({water.spacing} vs {fat.spacing})")
    water_rows, fat_rows = _common_slices(water, fat, label, notes)
    water_volume = water.volume[water_rows]
    fat_volume = fat.volume[fat_rows]
    positions = water.positions[water_rows].copy()
    if water_volume.shape[1:] != fat_volume.shape[1:]:
        water_volume, fat_volume, positions = _crop_in_plane(water_volume, fat_volume, positions, fat.positions[fat_rows][0], water.spacing, label, notes)
    return Station(
        water=np.ascontiguousarray(water_volume),
        fat=np.ascontiguousarray(fat_volume),
        positions=positions,
        pixel_spacing=water.spacing,
        series_description=water.description,
        series_number=water.number,
        series_time=water.time,
        notes=notes,
    )


def _common_slices(water: _Series, fat: _Series, label: str, notes: list[str]) -> tuple[slice, slice]:
    """The runs of slices both series hold at the same z (within tolerance).

    Slices rather than index arrays, so the station's volumes are views of the series' ones
    instead of copies.
    """
    water_z = water.positions[:, 2]
    fat_z = fat.positions[:, 2]
    if len(water_z) == len(fat_z) and np.allclose(water_z, fat_z, atol=_POSITION_TOLERANCE_MM):
        return slice(None), slice(None)
    distance = np.abs(water_z[:, None] - fat_z[None, :])
    water_rows, fat_rows = np.nonzero(distance < _POSITION_TOLERANCE_MM)
    longest = max(len(water_z), len(fat_z))
    contiguous = water_rows.size > 0 and np.all(np.diff(water_rows) == 1) and np.all(np.diff(fat_rows) == 1)
    if water_rows.size < _MIN_DECODED_SHARE * longest or not contiguous:
        raise ExamReadError(
            Stage.PAIRING,
            f"{label}: slice positions do not match ({len(water_z)} water, {len(fat_z)} fat slices, {water_rows.size} shared)",
        )
    notes.append(f"{label}: water has {len(water_z)} and fat {len(fat_z)} slices; kept the {water_rows.size} at common positions")
    return slice(int(water_rows[0]), int(water_rows[-1]) + 1), slice(int(fat_rows[0]), int(fat_rows[-1]) + 1)


def _crop_in_plane(
    water: np.ndarray,
    fat: np.ndarray,
    positions: np.ndarray,
    fat_origin: np.ndarray,
    spacing: tuple[float, float],
    label: str,
    notes: list[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop both to the field of view they share, located by ImagePositionPatient.

    The first voxel's x/y say where each image starts, so the shared rows/columns are the
    intersection of the two extents; for isocentred images that is a centred crop, which
    keeps the isocentre convention. Headers that disagree by a fraction of a pixel fall back
    to a centred crop.
    """
    water_origin = positions[0]
    row_offset = (fat_origin[1] - water_origin[1]) / spacing[0]
    col_offset = (fat_origin[0] - water_origin[0]) / spacing[1]
    by_header = abs(row_offset - round(row_offset)) < 0.05 and abs(col_offset - round(col_offset)) < 0.05
    if by_header:
        row_offset, col_offset = round(row_offset), round(col_offset)
    else:
        row_offset = (water.shape[1] - fat.shape[1]) // 2
        col_offset = (water.shape[2] - fat.shape[2]) // 2
        notes.append(f"{label}: water and fat origins disagree by a fraction of a pixel; cropped about the centre")
    water_row_range = (max(0, row_offset), min(water.shape[1], row_offset + fat.shape[1]))
    water_col_range = (max(0, col_offset), min(water.shape[2], col_offset + fat.shape[2]))
    if water_row_range[1] <= water_row_range[0] or water_col_range[1] <= water_col_range[0]:
        raise ExamReadError(Stage.PAIRING, f"{label}: water and fat fields of view do not overlap in-plane")
    rows = slice(*water_row_range)
    cols = slice(*water_col_range)
    fat_rows = slice(water_row_range[0] - row_offset, water_row_range[1] - row_offset)
    fat_cols = slice(water_col_range[0] - col_offset, water_col_range[1] - col_offset)
    cropped_positions = positions.copy()
    cropped_positions[:, 0] += water_col_range[0] * spacing[1]
    cropped_positions[:, 1] += water_row_range[0] * spacing[0]
    water_cropped, fat_cropped = water[:, rows, cols], fat[:, fat_rows, fat_cols]
    notes.append(
        f"{label}: water {water.shape[1]}x{water.shape[2]} and fat {fat.shape[1]}x{fat.shape[2]} "
        f"cropped to the common {water_cropped.shape[1]}x{water_cropped.shape[2]}"
    )
    return water_cropped, fat_cropped, cropped_positions
