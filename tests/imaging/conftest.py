"""Small field-20201-like DICOM exams written with pydicom, for the reader tests.

A station here is tiny (6 slices of 16 x 20) but carries the real header structure: four
series (W, F, in, opp), isocentred ImagePositionPatient, SeriesTime, a manifest. Pixel values
encode (series base, slice, row, column) so tests can tell exactly which slice landed where.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage, generate_uid

SPACING = 2.23214293
CONTRAST_BASE = {"W": 1000, "F": 200, "in": 1500, "opp": 700}


@dataclass
class SeriesSpec:
    """One series of one station; `skip` slices are not written, `corrupt` ones are truncated."""

    contrast: str
    number: int
    top_z: float
    slices: int = 6
    rows: int = 16
    cols: int = 20
    slice_spacing: float = 3.0
    stem: str = "Dixon_noBH"
    time: str = "101010.000000"
    base: int | None = None
    uid: str | None = field(default_factory=generate_uid)
    skip: tuple[int, ...] = ()
    corrupt: tuple[int, ...] = ()
    lenient: tuple[int, ...] = ()
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    private_bytes: int = 0
    implicit_vr: bool = False
    nested_sequence: bool = False
    #: Header values set on every slice (None deletes the tag): hostile or broken headers.
    tags: dict[str, object] = field(default_factory=dict)
    #: Header values set on some slices: slice index -> keyword -> value (None deletes).
    slice_tags: dict[int, dict[str, object]] = field(default_factory=dict)

    @property
    def description(self) -> str:
        return f"{self.stem}_{self.contrast}"

    def pixel_base(self) -> int:
        return CONTRAST_BASE[self.contrast] if self.base is None else self.base

    def expected(self) -> np.ndarray:
        """The float32 volume a reader should return (all slices, head to foot)."""
        return np.stack([slice_pixels(self, index) for index in range(self.slices)]).astype(np.float32)

    def z(self, index: int) -> float:
        return self.top_z - index * self.slice_spacing

    def origin(self) -> tuple[float, float]:
        return -(self.cols - 1) / 2 * SPACING, -(self.rows - 1) / 2 * SPACING


def slice_pixels(spec: SeriesSpec, index: int) -> np.ndarray:
    rows, cols = np.mgrid[0 : spec.rows, 0 : spec.cols]
    return (spec.pixel_base() + 10 * index + rows * 3 + cols).astype(np.uint16)


def slice_bytes(spec: SeriesSpec, index: int) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if spec.implicit_vr else ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SeriesTime = spec.time
    ds.SeriesDescription = spec.description
    ds.PatientName = "Synthetic^Subject"
    if spec.uid is not None:
        ds.SeriesInstanceUID = spec.uid
    ds.SeriesNumber = spec.number
    ds.InstanceNumber = index + 1
    x0, y0 = spec.origin()
    ds.ImagePositionPatient = [round(x0, 6), round(y0, 6), round(spec.z(index), 6)]
    ds.ImageOrientationPatient = list(spec.orientation)
    ds.SliceThickness = 99.0  # deliberately wrong: readers must use positions
    ds.SliceLocation = float(index)  # deliberately wrong order
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.cols
    ds.PixelSpacing = [SPACING, SPACING]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if spec.private_bytes:
        block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
        block.add_new(0x10, "OB", b"\x01" * spec.private_bytes)
    if spec.nested_sequence:
        ds.ReferencedImageSequence = _undefined_length_sequence(depth=2)
        ds["ReferencedImageSequence"].is_undefined_length = True
    ds.PixelData = slice_pixels(spec, index).tobytes()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values written on purpose
        for keyword, value in {**spec.tags, **spec.slice_tags.get(index, {})}.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(buffer, implicit_vr=spec.implicit_vr, little_endian=True, enforce_file_format=True)
    data = buffer.getvalue()
    if index in spec.corrupt:
        data = data[: len(data) - spec.rows * spec.cols]
    if index in spec.lenient:
        data = data[128 + 4 :]  # no preamble, no DICM prefix: strict readers refuse it
    return data


def _undefined_length_sequence(depth: int) -> Sequence:
    """A sequence written with undefined lengths, nested, as some scanners write them."""
    item = Dataset()
    item.ReferencedSOPClassUID = MRImageStorage
    item.ReferencedSOPInstanceUID = generate_uid()
    if depth > 1:
        item.ReferencedImageSequence = _undefined_length_sequence(depth - 1)
        item["ReferencedImageSequence"].is_undefined_length = True
    item.is_undefined_length_sequence_item = True
    return Sequence([item])


def series_files(spec: SeriesSpec) -> dict[str, bytes]:
    return {
        f"{spec.number:03d}_{spec.contrast}_{index:03d}.dcm": slice_bytes(spec, index)
        for index in range(spec.slices)
        if index not in spec.skip
    }


def station_specs(number: int, top_z: float, **overrides: object) -> list[SeriesSpec]:
    """The four series of one station (in, opp, F, W as Siemens numbers them)."""
    return [
        SeriesSpec(contrast=contrast, number=number * 10 + offset, top_z=top_z, **overrides)  # type: ignore[arg-type]
        for offset, contrast in enumerate(("in", "opp", "F", "W"))
    ]


def exam_specs(stations: int = 3, **overrides: object) -> list[SeriesSpec]:
    """Stations head to foot, each 6 slices at 3 mm overlapping the next by one slice."""
    return [spec for index in range(stations) for spec in station_specs(index + 1, 100.0 - index * 15.0, **overrides)]


def find(specs: list[SeriesSpec], station: int, contrast: str) -> SeriesSpec:
    return next(spec for spec in specs if spec.number == station * 10 + ("in", "opp", "F", "W").index(contrast) and spec.contrast == contrast)


def exam_files(specs: list[SeriesSpec], manifest: str | None = "manifest.csv") -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    if manifest:
        files[manifest] = b'filename,Series Descripton,date\nx.dcm,"Dixon_noBH_W",Aug 30, 2015\n'
    for spec in specs:
        files.update(series_files(spec))
    return files


def zip_bytes(files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def declare_size(archive: bytes, member: str, size: int) -> bytes:
    """Rewrite the central directory so `member` declares `size` uncompressed bytes (a bomb)."""
    data = bytearray(archive)
    name = member.encode()
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) != -1:
        name_length = int.from_bytes(data[start + 28 : start + 30], "little")
        if bytes(data[start + 46 : start + 46 + name_length]) == name:
            data[start + 24 : start + 28] = size.to_bytes(4, "little")
            return bytes(data)
        start += 4
    raise KeyError(member)


def mark_encrypted(archive: bytes, member: str) -> bytes:
    """Set the encryption flag of `member` in its local and central headers, as a
    password-protected zip has it (the data stay as they are: no reader gets that far)."""
    data = bytearray(archive)
    info = zipfile.ZipFile(io.BytesIO(archive)).getinfo(member)
    data[info.header_offset + 6] |= 0x1
    name = member.encode()
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) != -1:
        name_length = int.from_bytes(data[start + 28 : start + 30], "little")
        if bytes(data[start + 46 : start + 46 + name_length]) == name:
            data[start + 8] |= 0x1
            return bytes(data)
        start += 4
    raise KeyError(member)


@pytest.fixture
def dicom() -> SimpleNamespace:
    """The exam-writing helpers, as one namespace for the tests."""
    return SimpleNamespace(
        SeriesSpec=SeriesSpec,
        replace=replace,
        slice_bytes=slice_bytes,
        series_files=series_files,
        station_specs=station_specs,
        exam_specs=exam_specs,
        exam_files=exam_files,
        find=find,
        zip_bytes=zip_bytes,
        declare_size=declare_size,
        mark_encrypted=mark_encrypted,
        spacing=SPACING,
        pydicom=pydicom,
    )
