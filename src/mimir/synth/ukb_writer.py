"""Synthetic exams written exactly as UK Biobank field-20201 zips.

Noiseless water/fat volumes on the 3 mm grid become six Dixon stations with the real station
geometry, receiver gain, coil inhomogeneity and magnitude noise, stored as one uncompressed
DICOM file per slice (4 series per station) plus a manifest, so the reader is exercised on
what the real archive contains (docs/ukb-body-mri.md, section 1).

Speed matters (a cohort is thousands of subjects): each series is encoded once by pydicom as a
template and only the per-slice elements are packed by hand, and noise comes from a lookup table.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import itertools
import logging
import math
import os
import struct
import tempfile
import time
import zipfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from scipy.special import ndtri

from mimir.protocol import (
    COLUMNS,
    GRID_ROWS,
    GRID_SLICE_SPACING_MM,
    PIXEL_SPACING_MM,
    SERIES_SUFFIXES,
    STATIONS,
    StationLayout,
)
from mimir.synth.quirks import QuirkPlan, QuirkRecord, SliceTarget, plan_quirks

logger = logging.getLogger(__name__)

#: Counts of pure lean-tissue water (water image) and pure fat (fat image) at gain 1.
WATER_COUNTS = 700.0
FAT_COUNTS = 900.0
#: Largest stored value (12 bits stored).
MAX_COUNT = 4095
#: Receiver gain range per station.
GAIN_RANGE = (0.8, 1.25)
#: Standard deviation of the coefficients of the smooth log coil field.
BIAS_COEFFICIENT_SD = 0.08
#: Noise standard deviation range (counts) of the complex data before taking the magnitude.
NOISE_SIGMA_RANGE = (8.0, 16.0)
#: z of the most superior slice of station 1 before jitter (mm, patient LPS).
FIRST_SLICE_Z_MM = 60.0
#: Nominal overlap between neighbouring stations (first-to-last slice centres), mm.
NOMINAL_OVERLAP_MM = 28.0
#: Overlap used when writing on the grid (a whole number of grid slices).
ON_GRID_OVERLAP_MM = 27.0
#: Per-station table position jitter (uniform +-, mm): a few mm, not tied to the grid.
TABLE_JITTER_MM = 4.0
#: Grid slices kept beyond the outermost stations so sub-voxel quirk shifts stay inside.
GRID_MARGIN_SLICES = 2

_BIAS_TERMS = 7  # x, y, x^2, y^2, xy, z, z^2
_NOISE_TABLE_SIZE = 1 << 16
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MANIFEST_COLUMNS = ("filename", "patientid", "studyid", "aetitle", "date", "seriesid", "series description")
#: The misspelling real manifests carry.
_MISSPELLED_COLUMN = "series discription"
_AE_TITLE = "MRC45041"
_IMAGE_TYPE = {
    "W": ["DERIVED", "PRIMARY", "DIXON", "WATER"],
    "F": ["DERIVED", "PRIMARY", "DIXON", "FAT"],
    "in": ["ORIGINAL", "PRIMARY", "DIXON", "IN_PHASE"],
    "opp": ["ORIGINAL", "PRIMARY", "DIXON", "OPP_PHASE"],
}
_ECHO_TIME_MS = {"W": "2.39", "F": "2.39", "in": "4.77", "opp": "2.39"}


@dataclass(frozen=True)
class StationPlan:
    """Geometry and acquisition settings of one station (positions in patient LPS mm)."""

    #: 1-based station number, head to foot.
    number: int
    layout: StationLayout
    #: z of the first (most superior) slice.
    z_top_mm: float
    slice_spacing_mm: float
    slices: int
    rows: int
    columns: int = COLUMNS
    #: In-plane (x, y) shift of the station from the isocentre-centred position.
    offset_xy_mm: tuple[float, float] = (0.0, 0.0)
    gain: float = 1.0
    #: Coefficients of the smooth log coil field (x, y, x^2, y^2, xy, z, z^2 on [-1, 1]).
    bias: tuple[float, ...] = (0.0,) * _BIAS_TERMS

    @property
    def z_positions(self) -> np.ndarray:
        """z of every slice, head to foot (descending)."""
        return self.z_top_mm - self.slice_spacing_mm * np.arange(self.slices)

    @property
    def z_bottom_mm(self) -> float:
        return self.z_top_mm - self.slice_spacing_mm * (self.slices - 1)

    @property
    def first_voxel_xy_mm(self) -> tuple[float, float]:
        """(x, y) of the centre of pixel (0, 0): isocentred, plus any in-plane shift."""
        dx, dy = self.offset_xy_mm
        return -(self.columns - 1) / 2 * PIXEL_SPACING_MM + dx, -(self.rows - 1) / 2 * PIXEL_SPACING_MM + dy

    def series_description(self, suffix: str) -> str:
        return f"{self.layout.series_stem}_{suffix}"


@dataclass(frozen=True)
class ExamPlan:
    """Where the stations lie, and the 3 mm volume the anatomy must be rendered on to cover them."""

    stations: tuple[StationPlan, ...]
    #: z of slice 0 of the 3 mm volume the anatomy must be rendered on.
    grid_z_top_mm: float
    #: Number of 3 mm slices of that volume; it covers every station's extent.
    grid_slices: int
    #: Standard deviation (counts) of the complex noise of every station.
    noise_sigma: float = 12.0
    on_grid: bool = False

    @property
    def grid_z_positions(self) -> np.ndarray:
        return self.grid_z_top_mm - GRID_SLICE_SPACING_MM * np.arange(self.grid_slices)


def plan_exam(rng: np.random.Generator, on_grid: bool = False) -> ExamPlan:
    """Station positions, gains and coil fields of one exam.

    Table positions vary by a few mm per station (so stations fall off the 3 mm grid and a
    reader must resample); `on_grid` instead gives every station 3 mm slices on the grid,
    covering about the same length as the real station.
    """
    stations: list[StationPlan] = []
    for number, layout in enumerate(STATIONS, start=1):
        if on_grid:
            spacing = GRID_SLICE_SPACING_MM
            slices = math.floor((layout.slices - 1) * layout.slice_spacing_mm / spacing + 0.5) + 1
            jitter, overlap = 0.0, ON_GRID_OVERLAP_MM
        else:
            spacing, slices = layout.slice_spacing_mm, layout.slices
            jitter, overlap = float(rng.uniform(-TABLE_JITTER_MM, TABLE_JITTER_MM)), NOMINAL_OVERLAP_MM
        z_top = FIRST_SLICE_Z_MM if not stations else stations[-1].z_bottom_mm + overlap
        bias = np.clip(rng.normal(0.0, BIAS_COEFFICIENT_SD, _BIAS_TERMS), -0.2, 0.2)
        stations.append(
            StationPlan(
                number=number,
                layout=layout,
                z_top_mm=float(z_top + jitter),
                slice_spacing_mm=spacing,
                slices=slices,
                rows=layout.rows,
                gain=float(rng.uniform(*GAIN_RANGE)),
                bias=tuple(float(c) for c in bias),
            )
        )
    grid_z_top = stations[0].z_top_mm + GRID_MARGIN_SLICES * GRID_SLICE_SPACING_MM
    lowest = min(station.z_bottom_mm for station in stations)
    grid_slices = math.ceil((grid_z_top - lowest) / GRID_SLICE_SPACING_MM - 1e-6) + 1 + GRID_MARGIN_SLICES
    return ExamPlan(
        stations=tuple(stations),
        grid_z_top_mm=grid_z_top,
        grid_slices=grid_slices,
        noise_sigma=float(rng.uniform(*NOISE_SIGMA_RANGE)),
        on_grid=on_grid,
    )


# --- sampling and signal -------------------------------------------------------------------


def _linear_samples(volume: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    """Linear interpolation at fractional indices along one axis; zero outside the volume."""
    size = volume.shape[axis]
    positions = np.where(np.abs(positions - np.round(positions)) < 1e-6, np.round(positions), positions)
    lower = np.floor(positions).astype(np.int64)
    contiguous = np.all(np.diff(lower) == 1) and lower[0] >= 0 and lower[-1] < size
    if contiguous and np.all(positions == lower):
        index = [slice(None)] * volume.ndim
        index[axis] = slice(int(lower[0]), int(lower[-1]) + 1)
        return volume[tuple(index)]
    shape = [1] * volume.ndim
    shape[axis] = len(positions)
    fraction = positions - lower
    result = np.zeros(volume.shape[:axis] + (len(positions),) + volume.shape[axis + 1 :], np.float32)
    for index, weight in ((lower, 1.0 - fraction), (lower + 1, fraction)):
        weight = np.where((index >= 0) & (index < size), weight, 0.0).astype(np.float32).reshape(shape)
        result += np.take(volume, np.clip(index, 0, size - 1), axis=axis) * weight
    return result


def _sample_station(volume: np.ndarray, plan: ExamPlan, station: StationPlan, rows: int, columns: int) -> np.ndarray:
    """The station's slices from the 3 mm volume: linear in z, rows centred (plus any shift) in-plane.

    Rows or columns beyond the station's nominal size are appended after the last ones,
    keeping the first voxel where it is.
    """
    grid_index = (plan.grid_z_top_mm - station.z_positions) / GRID_SLICE_SPACING_MM
    if grid_index.min() < -1e-6 or grid_index.max() > plan.grid_slices - 1 + 1e-6:
        raise ValueError(f"station {station.number} extends beyond the planned grid")
    x0, y0 = station.first_voxel_xy_mm
    # Grid pixel (r, c) is centred at ((c - (C-1)/2) s, (r - (R-1)/2) s).
    first_row = y0 / PIXEL_SPACING_MM + (GRID_ROWS - 1) / 2
    first_column = x0 / PIXEL_SPACING_MM + (COLUMNS - 1) / 2
    slab = _linear_samples(volume, 0, grid_index)
    slab = _linear_samples(slab, 1, first_row + np.arange(rows))
    return _linear_samples(slab, 2, first_column + np.arange(columns))


def _coil_field(station: StationPlan, shape: tuple[int, int, int]) -> np.ndarray:
    """Smooth multiplicative inhomogeneity exp(polynomial) over the station, separable in z."""
    n, rows, columns = shape
    x = np.linspace(-1.0, 1.0, columns, dtype=np.float32)[None, :]
    y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
    z = np.linspace(-1.0, 1.0, n, dtype=np.float32)
    cx, cy, cxx, cyy, cxy, cz, czz = station.bias
    in_plane = np.exp(cx * x + cy * y + cxx * x * x + cyy * y * y + cxy * x * y).astype(np.float32)
    along_z = np.exp(cz * z + czz * z * z).astype(np.float32)
    return along_z[:, None, None] * in_plane[None, :, :]


def _noise_table(sigma: float) -> np.ndarray:
    """Gaussian quantiles: indexing with uniform uint16 draws gives N(0, sigma) noise far faster."""
    return (sigma * ndtri((np.arange(_NOISE_TABLE_SIZE) + 0.5) / _NOISE_TABLE_SIZE)).astype(np.float32)


def _magnitude(signal: np.ndarray, table: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """|signal + complex Gaussian noise| (Rician), in place on a float32 signal."""
    draws = rng.integers(0, _NOISE_TABLE_SIZE, size=(2, *signal.shape), dtype=np.uint16)
    signal += table[draws[0]]
    np.multiply(signal, signal, out=signal)
    imaginary = table[draws[1]]
    np.multiply(imaginary, imaginary, out=imaginary)
    signal += imaginary
    return np.sqrt(signal, out=signal)


def _to_counts(values: np.ndarray) -> np.ndarray:
    np.rint(values, out=values)
    np.clip(values, 0, MAX_COUNT, out=values)
    return values.astype("<u2")


def _acquire_station(
    water: np.ndarray,
    fat: np.ndarray,
    plan: ExamPlan,
    station: StationPlan,
    rng: np.random.Generator,
    *,
    gain_factor: float = 1.0,
    fat_extra: tuple[int, int] = (0, 0),
) -> dict[str, np.ndarray]:
    """The four uint16 series (W, F, in, opp) of one station acquisition.

    In- and opposed-phase come from the same noisy water and fat (W + F and |W - F|).
    """
    rows, columns = station.rows, station.columns
    fat_shape = (station.slices, rows + fat_extra[0], columns + fat_extra[1])
    coil = _coil_field(station, fat_shape)
    gain = station.gain * gain_factor
    table = _noise_table(plan.noise_sigma)
    water_signal = _sample_station(water, plan, station, rows, columns) * (WATER_COUNTS * gain)
    water_signal *= coil[:, :rows, :columns]
    fat_signal = _sample_station(fat, plan, station, fat_shape[1], fat_shape[2]) * (FAT_COUNTS * gain)
    fat_signal *= coil
    water_noisy = _magnitude(water_signal, table, rng)
    fat_noisy = _magnitude(fat_signal, table, rng)
    in_phase = water_noisy + fat_noisy[:, :rows, :columns]
    opposed = np.abs(water_noisy - fat_noisy[:, :rows, :columns])
    images = {"W": water_noisy, "F": fat_noisy, "in": in_phase, "opp": opposed}
    return {suffix: _to_counts(values) for suffix, values in images.items()}


# --- DICOM encoding ------------------------------------------------------------------------

#: VRs whose length field is 4 bytes (after 2 reserved bytes) in explicit VR.
_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_TAG_SOP_INSTANCE_UID = 0x00080018
_TAG_INSTANCE_NUMBER = 0x00200013
_TAG_IMAGE_POSITION = 0x00200032
_TAG_SLICE_LOCATION = 0x00201041
_TAG_PIXEL_DATA = 0x7FE00010
#: Elements that change from slice to slice, in tag order.
_PER_SLICE_TAGS = (
    _TAG_SOP_INSTANCE_UID,
    _TAG_INSTANCE_NUMBER,
    _TAG_IMAGE_POSITION,
    _TAG_SLICE_LOCATION,
    _TAG_PIXEL_DATA,
)


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One explicit-VR little-endian element; `value` already padded to even length."""
    if vr in _LONG_LENGTH_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def _decimal_string(value: float) -> str:
    """A DS value of at most 16 characters (ten significant digits)."""
    return f"{value + 0.0:.10g}"


def _uid(*parts: object) -> str:
    """A valid UID under the UUID root 2.25, derived from its parts (same parts, same UID)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:15], 'big')}"


class _SeriesEncoder:
    """Encodes a series' shared elements once with pydicom and packs the per-slice ones by hand."""

    def __init__(self, shared: Dataset, implementation_uid: str) -> None:
        encoded: dict[int, bytes] = {}
        for element in shared:
            buffer = DicomBytesIO()
            buffer.is_little_endian, buffer.is_implicit_VR = True, False
            write_data_element(buffer, element)
            encoded[int(element.tag)] = buffer.getvalue()
        if set(encoded) & set(_PER_SLICE_TAGS):
            raise ValueError("per-slice elements must not be in the shared dataset")
        tags = sorted(encoded)
        bounds = [-1, *_PER_SLICE_TAGS, 1 << 32]
        #: Shared elements before, between and after the per-slice ones.
        self._chunks = [
            b"".join(encoded[tag] for tag in tags if lower < tag < upper) for lower, upper in itertools.pairwise(bounds)
        ]
        self._meta_before_uid = _element(0x00020001, b"OB", b"\x00\x01") + _element(
            0x00020002, b"UI", _padded(MRImageStorage, b"\x00")
        )
        self._meta_after_uid = _element(0x00020010, b"UI", _padded(ExplicitVRLittleEndian, b"\x00")) + (
            _element(0x00020012, b"UI", _padded(implementation_uid, b"\x00"))
            + _element(0x00020013, b"SH", _padded("MIMIR_SYNTH", b" "))
        )

    def encode(
        self, sop_uid: str, instance_number: int, position: tuple[float, float, float], pixels: np.ndarray
    ) -> bytes:
        uid = _padded(sop_uid, b"\x00")
        meta = self._meta_before_uid + _element(0x00020003, b"UI", uid) + self._meta_after_uid
        per_slice = (
            _element(_TAG_SOP_INSTANCE_UID, b"UI", uid),
            _element(_TAG_INSTANCE_NUMBER, b"IS", _padded(str(instance_number), b" ")),
            _element(_TAG_IMAGE_POSITION, b"DS", _padded("\\".join(map(_decimal_string, position)), b" ")),
            _element(_TAG_SLICE_LOCATION, b"DS", _padded(_decimal_string(position[2]), b" ")),
            _element(_TAG_PIXEL_DATA, b"OW", pixels.tobytes()),
        )
        parts = [bytes(128), b"DICM", _element(0x00020000, b"UL", struct.pack("<I", len(meta))), meta]
        for chunk, element in zip(self._chunks[:-1], per_slice, strict=True):
            parts += (chunk, element)
        parts.append(self._chunks[-1])
        return b"".join(parts)


# --- exam assembly -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Acquisition:
    """One acquisition of one station; a station acquired twice has a superseded first one."""

    station_index: int
    start: dt.datetime
    first_series_number: int
    superseded: bool = False


@dataclass(frozen=True)
class _Series:
    """Identity of one series of one acquisition."""

    suffix: str
    number: int
    uid: str
    time: dt.datetime


@dataclass
class _ExamIdentity:
    eid: int
    instance: int
    token: int
    study_start: dt.datetime
    study_uid: str = field(init=False)
    frame_uid: str = field(init=False)
    implementation_uid: str = field(init=False)

    def __post_init__(self) -> None:
        self.study_uid = _uid("study", self.eid, self.instance, self.token)
        self.frame_uid = _uid("frame", self.eid, self.instance, self.token)
        self.implementation_uid = _uid("mimir-synth-implementation")

    def series(self, acquisition: _Acquisition, position: int, suffix: str) -> _Series:
        number = acquisition.first_series_number + position
        uid = _uid("series", self.eid, self.instance, self.token, number)
        # The four contrasts of one acquisition are reconstructed a moment apart.
        return _Series(suffix, number, uid, acquisition.start + dt.timedelta(milliseconds=100 * position))

    def image_uid(self, series: _Series, slice_index: int) -> str:
        return _uid("image", self.eid, self.instance, self.token, series.number, slice_index)


def _tm(moment: dt.datetime) -> str:
    return moment.strftime("%H%M%S.%f")


def _shared_dataset(
    identity: _ExamIdentity, station: StationPlan, acquisition: _Acquisition, series: _Series, shape: tuple[int, int]
) -> Dataset:
    """Every element a slice of this series shares with its neighbours."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = _IMAGE_TYPE[series.suffix]
    ds.SOPClassUID = MRImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = identity.study_start.strftime("%Y%m%d")
    ds.StudyTime = _tm(identity.study_start)
    ds.SeriesTime = ds.ContentTime = _tm(series.time)
    ds.AcquisitionTime = _tm(acquisition.start)
    ds.AccessionNumber = ""
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.InstitutionName = "UK Biobank Imaging Centre"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "UK Biobank body MRI (synthetic)"
    ds.SeriesDescription = station.series_description(series.suffix)
    ds.ManufacturerModelName = "Aera"
    ds.PatientName = str(identity.eid)
    ds.PatientID = str(identity.eid)
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = ["SP", "OSP"]
    ds.MRAcquisitionType = "3D"
    ds.SliceThickness = _decimal_string(station.slice_spacing_mm)
    ds.RepetitionTime = "6.69"
    ds.EchoTime = _ECHO_TIME_MS[series.suffix]
    ds.MagneticFieldStrength = "1.5"
    ds.FlipAngle = "10"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = identity.study_uid
    ds.SeriesInstanceUID = series.uid
    ds.StudyID = "1"
    ds.SeriesNumber = series.number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = identity.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = shape
    ds.PixelSpacing = [_decimal_string(PIXEL_SPACING_MM)] * 2
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


@dataclass(frozen=True)
class _SliceFile:
    name: str
    data: bytes
    series_uid: str
    series_description: str


def _series_files(
    identity: _ExamIdentity, station: StationPlan, acquisition: _Acquisition, images: dict[str, np.ndarray]
) -> Iterator[tuple[str, list[_SliceFile]]]:
    """Encoded slice files of the four series of one acquisition, by series suffix."""
    x0, y0 = station.first_voxel_xy_mm
    for position, suffix in enumerate(SERIES_SUFFIXES):
        series = identity.series(acquisition, position, suffix)
        volume = images[suffix]
        shared = _shared_dataset(identity, station, acquisition, series, volume.shape[1:])
        encoder = _SeriesEncoder(shared, identity.implementation_uid)
        files = []
        for index, z in enumerate(station.z_positions):
            sop_uid = identity.image_uid(series, index)
            data = encoder.encode(sop_uid, index + 1, (x0, y0, float(z)), volume[index])
            files.append(_SliceFile(f"{sop_uid}.dcm", data, series.uid, shared.SeriesDescription))
        yield suffix, files


def _schedule(
    plan: ExamPlan, quirks: QuirkPlan, study_start: dt.datetime, rng: np.random.Generator
) -> list[_Acquisition]:
    """Acquisitions in time order; series numbers follow that order, four per acquisition.

    A station acquired twice is repeated right away, before the table moves on.
    """
    acquisitions: list[_Acquisition] = []
    moment = study_start + dt.timedelta(seconds=float(rng.uniform(60, 180)))
    for index, duration in enumerate(rng.uniform(45.0, 90.0, size=len(plan.stations))):
        for superseded in (True, False) if quirks.duplicate_station == index else (False,):
            moment = moment.replace(microsecond=(moment.microsecond // 1000) * 1000)
            acquisitions.append(_Acquisition(index, moment, 1 + 4 * len(acquisitions), superseded))
            moment += dt.timedelta(seconds=float(duration))
    return acquisitions


def _manifest(files: list[_SliceFile], identity: _ExamIdentity, misspelled: bool) -> bytes:
    """manifest.csv in the archive's style: one row per DICOM file, a date with a comma."""
    start = identity.study_start
    date = f"{_MONTHS[start.month - 1]} {start.day}, {start.year}"
    header = [_MISSPELLED_COLUMN if misspelled and name == "series description" else name for name in _MANIFEST_COLUMNS]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    for item in files:
        writer.writerow(
            [item.name, identity.eid, identity.study_uid, _AE_TITLE, date, item.series_uid, item.series_description]
        )
    return buffer.getvalue().encode("ascii")


def _truncate(data: bytes, keep_fraction: float) -> bytes:
    """The file as an interrupted transfer leaves it: header intact, pixel data cut short."""
    return data[: int(len(data) * keep_fraction)]


def _shift_station(plan: ExamPlan, quirks: QuirkPlan) -> ExamPlan:
    """The plan with the off-grid quirk's station moved by a fraction of a voxel."""
    if quirks.off_grid_station is None:
        return plan
    dx, dy, dz = quirks.off_grid_shift_mm
    stations = list(plan.stations)
    moved = stations[quirks.off_grid_station]
    stations[quirks.off_grid_station] = replace(moved, z_top_mm=moved.z_top_mm + dz, offset_xy_mm=(dx, dy))
    return replace(plan, stations=tuple(stations))


def _is_target(target: SliceTarget | None, acquisition: _Acquisition, suffix: str, slice_index: int) -> bool:
    """Whether a slice quirk hits this slice; never the superseded copy of a station acquired twice."""
    here = SliceTarget(station=acquisition.station_index, suffix=suffix, slice_index=slice_index)
    return target == here and not acquisition.superseded


def _records(
    eid: int,
    plan: ExamPlan,
    quirks: QuirkPlan,
    acquisitions: list[_Acquisition],
    corrupt_name: str | None,
    manifest_name: str,
) -> list[QuirkRecord]:
    """What was injected, where, in words a person checking the zip can follow."""
    records: list[QuirkRecord] = []

    def add(quirk: str, station: int | None, detail: str) -> None:
        number = None if station is None else station + 1
        records.append(QuirkRecord(eid=eid, quirk=quirk, station=number, detail=detail))

    if quirks.duplicate_station is not None:
        first, second = (a for a in acquisitions if a.station_index == quirks.duplicate_station)
        add(
            "duplicate_station",
            quirks.duplicate_station,
            f"series {first.first_series_number}-{first.first_series_number + 3} at {_tm(first.start)} "
            f"(gain x{quirks.duplicate_gain_factor:.2f}) superseded by series "
            f"{second.first_series_number}-{second.first_series_number + 3} at {_tm(second.start)}",
        )
    if quirks.misspelled_manifest:
        add("misspelled_manifest", None, f"{manifest_name} with column '{_MISSPELLED_COLUMN}'")
    if quirks.off_grid_station is not None:
        dx, dy, dz = quirks.off_grid_shift_mm
        add("off_grid_station", quirks.off_grid_station, f"shifted by x={dx:+.3f} y={dy:+.3f} z={dz:+.3f} mm")
    if quirks.size_mismatch_station is not None:
        station = plan.stations[quirks.size_mismatch_station]
        fat_rows, fat_columns = (a + b for a, b in zip((station.rows, station.columns), quirks.size_mismatch_extra, strict=True))
        add(
            "size_mismatch",
            quirks.size_mismatch_station,
            f"fat {fat_rows}x{fat_columns} vs water {station.rows}x{station.columns} "
            "(extra rows/columns after the last, same ImagePositionPatient)",
        )
    for quirk, target in (("missing_slice", quirks.missing_slice), ("corrupt_file", quirks.corrupt_slice)):
        if target is None:
            continue
        station = plan.stations[target.station]
        where = (
            f"{station.series_description(target.suffix)} slice {target.slice_index + 1}/{station.slices} "
            f"at z={station.z_positions[target.slice_index]:.3f} mm"
        )
        if quirk == "missing_slice":
            add(quirk, target.station, f"{where} absent")
        else:
            add(quirk, target.station, f"{corrupt_name} ({where}) truncated to {quirks.corrupt_keep_fraction:.0%}")
    if quirks.extra_file is not None:
        add("extra_file", None, f"non-DICOM file {quirks.extra_file[0]}")
    if quirks.swap_station is not None:
        stem = plan.stations[quirks.swap_station].layout.series_stem
        add("water_fat_swap", quirks.swap_station, f"{stem}_W holds fat and {stem}_F water")
    return records


def _study_start(instance: int, study_date: dt.date | None, rng: np.random.Generator) -> dt.datetime:
    if study_date is None:
        # First imaging visits from 2014, repeat visits from 2019.
        first_day = dt.date(2014 if instance <= 2 else 2019, 4, 1)
        study_date = first_day + dt.timedelta(days=int(rng.integers(0, 5 * 365)))
    seconds = int(rng.integers(8 * 3600, 18 * 3600))
    return dt.datetime.combine(study_date, dt.time()) + dt.timedelta(seconds=seconds)


def write_exam_zip(
    path: Path,
    water: np.ndarray,
    fat: np.ndarray,
    plan: ExamPlan,
    *,
    eid: int,
    instance: int,
    rng: np.random.Generator,
    quirks: Collection[str] = (),
    study_date: dt.date | None = None,
    compresslevel: int | None = None,
) -> list[QuirkRecord]:
    """Write one exam as a field-20201 zip at `path`; returns the injected quirks.

    `water`/`fat` are noiseless float32 (plan.grid_slices, 174, 224) volumes on the plan's grid.
    The zip is written to a temporary file beside `path` and moved into place, so a reader never
    meets a half-written zip. Members are stored uncompressed unless `compresslevel` (1-9) asks
    for deflate (about 2.5x slower, half the size). The same `rng` state gives the same bytes,
    and the quirks requested do not change the clean stations' pixels.
    """
    expected = (plan.grid_slices, GRID_ROWS, COLUMNS)
    if water.shape != expected or fat.shape != expected:
        raise ValueError(f"water/fat must be {expected}, got {water.shape} and {fat.shape}")
    began = time.perf_counter()
    water = np.asarray(water, dtype=np.float32)
    fat = np.asarray(fat, dtype=np.float32)
    token = int(rng.integers(1 << 62))
    identity = _ExamIdentity(eid, instance, token, _study_start(instance, study_date, rng))
    station_seeds = rng.integers(0, 1 << 63, size=len(plan.stations))
    quirk_rng = np.random.default_rng(int(rng.integers(0, 1 << 63)))
    quirk_plan = plan_quirks(
        quirks,
        [station.slices for station in plan.stations],
        quirk_rng,
        pixel_spacing_mm=PIXEL_SPACING_MM,
        grid_spacing_mm=GRID_SLICE_SPACING_MM,
    )
    plan = _shift_station(plan, quirk_plan)
    acquisitions = _schedule(plan, quirk_plan, identity.study_start, rng)

    files: list[_SliceFile] = []
    corrupt_name: str | None = None
    for acquisition in acquisitions:
        index = acquisition.station_index
        images = _acquire_station(
            water,
            fat,
            plan,
            plan.stations[index],
            quirk_rng if acquisition.superseded else np.random.default_rng(int(station_seeds[index])),
            gain_factor=quirk_plan.duplicate_gain_factor if acquisition.superseded else 1.0,
            fat_extra=quirk_plan.size_mismatch_extra if quirk_plan.size_mismatch_station == index else (0, 0),
        )
        if quirk_plan.swap_station == index:
            images["W"], images["F"] = images["F"], images["W"]
        for suffix, series in _series_files(identity, plan.stations[index], acquisition, images):
            for slice_index, item in enumerate(series):
                if _is_target(quirk_plan.missing_slice, acquisition, suffix, slice_index):
                    continue
                if _is_target(quirk_plan.corrupt_slice, acquisition, suffix, slice_index):
                    item = replace(item, data=_truncate(item.data, quirk_plan.corrupt_keep_fraction))
                    corrupt_name = item.name
                files.append(item)

    manifest_name = "manifest.cvs" if quirk_plan.misspelled_manifest else "manifest.csv"
    members = [(manifest_name, _manifest(files, identity, quirk_plan.misspelled_manifest))]
    members += [(item.name, item.data) for item in files]
    if quirk_plan.extra_file is not None:
        members.append(quirk_plan.extra_file)
    _write_zip_atomically(Path(path), members, identity.study_start, compresslevel)
    logger.debug("wrote %s: %d members in %.2f s", path, len(members), time.perf_counter() - began)
    return _records(eid, plan, quirk_plan, acquisitions, corrupt_name, manifest_name)


def _write_zip_atomically(
    path: Path, members: list[tuple[str, bytes]], moment: dt.datetime, compresslevel: int | None
) -> None:
    """All members with one fixed timestamp, into a temporary file then renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    date_time = (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)
    compression = zipfile.ZIP_STORED if compresslevel is None else zipfile.ZIP_DEFLATED
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream, zipfile.ZipFile(stream, "w") as archive:
            for name, data in members:
                info = zipfile.ZipInfo(name, date_time=date_time)
                info.create_system = 3
                info.external_attr = 0o644 << 16
                archive.writestr(info, data, compress_type=compression, compresslevel=compresslevel)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
