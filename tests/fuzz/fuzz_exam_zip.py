"""atheris harness: hostile field-20201 zips through reading, fusion, projection and QC.

Every input must end as an image of the 2D format or as one of MIMIR's own errors (an
`ExamReadError` with its stage and reason, or another `MimirError`); any other exception is a
crash: compression would record it as a bare "TypeError: ..." instead of a reason.

The inputs are a small valid exam (three stations written with pydicom, as in
tests/imaging/conftest.py) changed in one of two ways chosen by the fuzzer: header values of
one slice replaced by hostile ones (NaN, inf, huge, negative, wrong type), or raw bytes of one
member overwritten. Run: python tests/fuzz/fuzz_exam_zip.py -max_total_time=60
"""

from __future__ import annotations

import importlib.util
import io
import sys
import warnings
import zipfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["mimir"]):
    from mimir.errors import MimirError
    from mimir.imaging.fusion import fuse_stations
    from mimir.imaging.projection import build_representation
    from mimir.imaging.quality import assess_quality
    from mimir.imaging.ukb_zip import read_zip_bytes
    from mimir.protocol import IMAGE_SHAPE

import numpy as np
import pydicom

_SPEC = importlib.util.spec_from_file_location("dicom_exams", Path(__file__).parents[1] / "imaging" / "conftest.py")
dicom_exams = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = dicom_exams  # its dataclasses look their module up
_SPEC.loader.exec_module(dicom_exams)

#: Header values a hostile or broken file may carry.
HOSTILE_NUMBERS = [float("nan"), float("inf"), -float("inf"), 0.0, -1.0, 1e-9, 1e9, 1e300, 50.0, 2**31]
HEADER_TAGS = [
    "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns",
    "RescaleSlope", "RescaleIntercept", "BitsAllocated", "BitsStored", "SamplesPerPixel",
    "SeriesDescription", "SeriesTime", "SeriesNumber", "InstanceNumber", "PixelRepresentation",
]


def seed_files() -> dict[str, bytes]:
    """A valid exam large enough for fusion and projection (three stations of 10 x 60 x 48)."""
    specs = [
        spec
        for index in range(3)
        for spec in dicom_exams.station_specs(index + 1, 100.0 - index * 24.0, slices=10, rows=60, cols=48)
    ]
    return dicom_exams.exam_files(specs)


SEED = seed_files()
NAMES = sorted(SEED)


def hostile_value(provider: atheris.FuzzedDataProvider, tag: str) -> object:
    choice = provider.ConsumeIntInRange(0, 4)
    number = provider.PickValueInList(HOSTILE_NUMBERS)
    if choice == 0:
        return number
    if choice == 1:
        return [number, provider.PickValueInList(HOSTILE_NUMBERS)]
    if choice == 2:
        return [provider.ConsumeRegularFloat() for _ in range(3 if "Position" in tag else 2)]
    if choice == 3:
        return provider.ConsumeUnicodeNoSurrogates(12)
    return provider.ConsumeIntInRange(-(2**31), 2**31 - 1)


def with_hostile_header(data: bytes, provider: atheris.FuzzedDataProvider) -> bytes | None:
    dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    tag = provider.PickValueInList(HEADER_TAGS)
    try:
        setattr(dataset, tag, hostile_value(provider, tag))
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=False)
    except Exception:  # noqa: BLE001 - pydicom refused to write that value: not an input
        return None
    return buffer.getvalue()


def with_overwritten_bytes(data: bytes, provider: atheris.FuzzedDataProvider) -> bytes:
    start = provider.ConsumeIntInRange(0, max(0, len(data) - 1))
    patch = provider.ConsumeBytes(provider.ConsumeIntInRange(1, 64))
    return data[:start] + patch + data[start + len(patch) :]


def exam_bytes(data: bytes) -> bytes | None:
    provider = atheris.FuzzedDataProvider(data)
    files = dict(SEED)
    for _ in range(provider.ConsumeIntInRange(1, 3)):
        name = provider.PickValueInList(NAMES)
        if provider.ConsumeBool() and name.endswith(".dcm"):
            changed = with_hostile_header(files[name], provider)
            if changed is None:
                return None
            files[name] = changed
        else:
            files[name] = with_overwritten_bytes(files[name], provider)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def compress_in_memory(archive: bytes) -> np.ndarray:
    """What compression does to one exam, without the cache."""
    exam = read_zip_bytes(archive)
    volume = fuse_stations(exam.stations)
    image = build_representation(volume)
    assess_quality(exam.stations, volume)
    return image


def test_one_input(data: bytes) -> None:
    archive = exam_bytes(data)
    if archive is None:
        return
    try:
        image = compress_in_memory(archive)
    except MimirError:
        return
    if image.shape != IMAGE_SHAPE or image.dtype != np.uint8:
        raise AssertionError(f"compression returned a {image.shape} {image.dtype} array")


def main() -> None:
    warnings.simplefilter("ignore")  # pydicom and numpy warn about every hostile value
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
