"""Hostile and broken headers and members (issue 18): a specific reason or a noted repair, never
a silently changed image, and no pixel decoded or array allocated before the headers pass."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless

from mimir.imaging import dicom_series
from mimir.imaging.dicom_series import Member, read_members
from mimir.imaging.errors import ExamReadError
from mimir.imaging.header_limits import MAX_MATRIX, header_limits_markdown
from mimir.imaging.ukb_zip import read_zip_bytes

RELIABILITY = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"


def read(dicom, specs):
    return read_zip_bytes(dicom.zip_bytes(dicom.exam_files(specs)))


def refusal(dicom, specs) -> ExamReadError:
    with pytest.raises(ExamReadError) as caught:
        read(dicom, specs)
    return caught.value


def test_missing_pixel_spacing_is_refused_naming_the_tag(dicom):
    specs = dicom.exam_specs(stations=2)
    for contrast in ("W", "F"):
        dicom.find(specs, 2, contrast).tags["PixelSpacing"] = None
    error = refusal(dicom, specs)
    assert error.stage == "header"
    assert "PixelSpacing (0028,0030) missing in all 6 slices" in error.reason


def test_pixel_spacing_missing_in_one_slice_is_taken_from_the_series_and_noted(dicom):
    specs = dicom.exam_specs(stations=1)
    water = dicom.find(specs, 1, "W")
    water.slice_tags[2] = {"PixelSpacing": None}
    exam = read(dicom, specs)
    np.testing.assert_array_equal(exam.stations[0].water, water.expected())
    assert exam.stations[0].pixel_spacing == (dicom.spacing, dicom.spacing)
    assert any("PixelSpacing (0028,0030) missing in 1 of 6 slices" in note for note in exam.notes)


@pytest.mark.parametrize("value", ["1e-6", "inf", "NaN", "50", "1e6", "0"])
def test_implausible_pixel_spacing_of_one_station_is_refused_with_the_value(dicom, value):
    specs = dicom.exam_specs(stations=2)
    for contrast in ("W", "F"):
        dicom.find(specs, 2, contrast).tags["PixelSpacing"] = [value, value]
    error = refusal(dicom, specs)
    assert error.stage == "header"
    assert "PixelSpacing (0028,0030) [" in error.reason
    assert f"{float(value):g}" in error.reason


def test_oversized_slices_are_refused_before_any_pixel_is_decoded(dicom, monkeypatch):
    """56 slices declaring 4096 x 4096 (the 8 MB zip that took a worker to 7 GB)."""
    specs = dicom.exam_specs(stations=1, slices=56)
    for contrast in ("W", "F"):
        dicom.find(specs, 1, contrast).tags.update(Rows=4096, Columns=4096)
    monkeypatch.setattr(dicom_series, "_decode_pixels", _no_decoding)
    error = refusal(dicom, specs)
    assert error.stage == "header"
    assert f"Rows (0028,0010) 4096 outside 8 to {MAX_MATRIX}" in error.reason


def test_exam_beyond_the_memory_budget_is_refused_before_any_pixel_is_decoded(dicom, monkeypatch):
    """Every slice within limits, but 100 of 1024 x 1024 per series add up past the budget."""
    specs = dicom.exam_specs(stations=1, slices=100)
    for contrast in ("W", "F"):
        dicom.find(specs, 1, contrast).tags.update(Rows=1024, Columns=1024)
    monkeypatch.setattr(dicom_series, "_decode_pixels", _no_decoding)
    error = refusal(dicom, specs)
    assert error.stage == "safety"
    assert "memory budget per exam" in error.reason and "(1024, 1024)" in error.reason


def _no_decoding(*args, **kwargs):
    raise AssertionError("pixels decoded before the headers were checked")


@pytest.mark.parametrize(("keyword", "value"), [("RescaleSlope", "NaN"), ("RescaleSlope", "inf"), ("RescaleIntercept", "-inf")])
def test_non_finite_rescale_on_one_slice_is_interpolated_and_noted(dicom, keyword, value):
    specs = dicom.exam_specs(stations=1)
    water = dicom.find(specs, 1, "W")
    water.slice_tags[3] = {keyword: value}
    exam = read(dicom, specs)
    # Slice values grow linearly with the index, so the neighbours' mean is the true slice.
    np.testing.assert_array_equal(exam.stations[0].water, water.expected())
    assert any(f"{keyword} (0028,105" in note and "not finite" in note for note in exam.notes)
    assert any("filled by linear interpolation" in note for note in exam.notes)


def test_rescale_that_overflows_float32_is_interpolated_and_noted(dicom):
    specs = dicom.exam_specs(stations=1)
    water = dicom.find(specs, 1, "W")
    water.slice_tags[2] = {"RescaleSlope": "1e38"}
    exam = read(dicom, specs)
    np.testing.assert_array_equal(exam.stations[0].water, water.expected())
    assert np.isfinite(exam.stations[0].water).all()


def test_non_finite_rescale_on_most_slices_refuses_the_series(dicom):
    specs = dicom.exam_specs(stations=1)
    dicom.find(specs, 1, "F").tags["RescaleSlope"] = "NaN"
    error = refusal(dicom, specs)
    assert error.stage == "header"
    assert "RescaleSlope (0028,1053) [nan] is not finite" in error.reason


@pytest.mark.parametrize("z", ["NaN", "inf", "1e6"])
def test_slice_without_a_usable_position_is_dropped_interpolated_and_noted(dicom, z):
    specs = dicom.exam_specs(stations=2)
    water = dicom.find(specs, 2, "W")
    x0, y0 = water.origin()
    water.slice_tags[2] = {"ImagePositionPatient": [f"{x0:.6f}", f"{y0:.6f}", z]}
    exam = read(dicom, specs)
    np.testing.assert_array_equal(exam.stations[1].water, water.expected())
    assert any("dropped: ImagePositionPatient (0020,0032)" in note for note in exam.notes)
    assert any("filled by linear interpolation" in note for note in exam.notes)


def test_series_whose_positions_span_too_many_slices_is_refused(dicom):
    specs = dicom.exam_specs(stations=1, slices=5)
    for contrast in ("W", "F"):
        spec = dicom.find(specs, 1, contrast)
        x0, y0 = spec.origin()
        spec.slice_tags[4] = {"ImagePositionPatient": [f"{x0:.6f}", f"{y0:.6f}", "-2900"]}
    error = refusal(dicom, specs)
    assert error.stage == "geometry"
    assert "ImagePositionPatient (0020,0032)" in error.reason and "spans 1001 slices" in error.reason


@pytest.mark.parametrize("spacing", [0.3, 30.0])
def test_implausible_slice_spacing_is_refused(dicom, spacing):
    specs = dicom.exam_specs(stations=1, slice_spacing=spacing)
    error = refusal(dicom, specs)
    assert error.stage == "geometry"
    assert f"slice spacing {spacing:g} mm from ImagePositionPatient (0020,0032)" in error.reason


def _jpeg_ls(data: bytes) -> bytes:
    """The slice re-labelled JPEG-LS with an encapsulated (undecodable without pyjpegls) frame."""
    from pydicom import dcmread

    dataset = dcmread(io.BytesIO(data))
    dataset.file_meta.TransferSyntaxUID = JPEGLSLossless
    dataset.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 60 + b"\xff\xd9"])
    dataset["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_series_without_a_decoder_for_its_transfer_syntax_names_it(dicom):
    if _has_jpeg_ls_decoder():
        pytest.skip("a JPEG-LS decoder is installed: the frame fails for another reason")
    specs = dicom.exam_specs(stations=1)
    files = dicom.exam_files(specs)
    for name in [name for name in files if "_W_" in name]:
        files[name] = _jpeg_ls(files[name])
    with pytest.raises(ExamReadError) as caught:
        read_zip_bytes(dicom.zip_bytes(files))
    assert caught.value.stage == "pixels"
    assert "JPEG-LS" in caught.value.reason and "missing dependencies" in caught.value.reason


def _has_jpeg_ls_decoder() -> bool:
    from pydicom.pixels.decoders import JPEGLSLosslessDecoder

    return JPEGLSLosslessDecoder.is_available


def test_all_members_encrypted_is_refused_naming_encryption(dicom):
    files = dicom.exam_files(dicom.exam_specs(stations=1))
    archive = dicom.zip_bytes(files)
    for name in files:
        archive = dicom.mark_encrypted(archive, name)
    with pytest.raises(ExamReadError) as caught:
        read_zip_bytes(archive)
    assert caught.value.stage == "open"
    assert "encrypted" in caught.value.reason


def test_one_encrypted_member_is_skipped_with_a_note_naming_encryption(dicom):
    specs = dicom.exam_specs(stations=1)
    files = dicom.exam_files(specs)
    victim = next(name for name in files if "_W_002" in name)
    exam = read_zip_bytes(dicom.mark_encrypted(dicom.zip_bytes(files), victim))
    assert any(victim in note and "encrypted" in note for note in exam.notes)
    np.testing.assert_array_equal(exam.stations[0].water, dicom.find(specs, 1, "W").expected())


class _CountingStream(io.BytesIO):
    """A member stream that records how many bytes were asked of it."""

    def __init__(self, data: bytes, counts: dict[str, int], name: str) -> None:
        super().__init__(data)
        self._counts, self._name = counts, name

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self._counts[self._name] = self._counts.get(self._name, 0) + len(chunk)
        return chunk


def test_members_that_cannot_be_dicom_are_skipped_after_their_first_bytes(dicom, monkeypatch):
    """Zeros and text members: no forced pydicom parse, nothing past the first 8 KiB read."""
    specs = dicom.exam_specs(stations=1)
    files = dicom.exam_files(specs)
    files["zeros_1.dcm"] = bytes(4 * 2**20)
    files["zeros_2.bin"] = bytes(2**20)
    counts: dict[str, int] = {}
    members = [Member(name, lambda name=name: _CountingStream(files[name], counts, name), lambda: b"") for name in files]
    forced = []
    original = dicom_series._read_header
    monkeypatch.setattr(dicom_series, "_read_header", lambda data, force: forced.append(force) or original(data, force))
    exam = read_members(members)
    assert counts["zeros_1.dcm"] <= 8192 and counts["zeros_2.bin"] <= 8192
    assert True not in forced
    assert exam.skipped_files == 3  # the manifest and the two blobs
    np.testing.assert_array_equal(exam.stations[0].water, dicom.find(specs, 1, "W").expected())


def test_zip_of_deflated_zeros_has_no_dicom(dicom):
    archive = dicom.zip_bytes({f"blob_{index}.dcm": bytes(2**20) for index in range(3)}, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(ExamReadError) as caught:
        read_zip_bytes(archive)
    assert caught.value.stage == "dicom"


def test_files_without_preamble_are_still_read_leniently(dicom):
    specs = dicom.exam_specs(stations=1, implicit_vr=True)
    dicom.find(specs, 1, "F").lenient = (1, 2)
    exam = read(dicom, specs)
    np.testing.assert_array_equal(exam.stations[0].fat, dicom.find(specs, 1, "F").expected())


def test_reliability_doc_shows_the_header_limits_table():
    assert header_limits_markdown() in RELIABILITY.read_text()


def _without_pixel_spacing(source: Path, target: Path) -> None:
    """A copy of a synthetic exam zip whose DICOM files all lack PixelSpacing."""
    from pydicom import dcmread

    with zipfile.ZipFile(source) as inside, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as outside:
        for info in inside.infolist():
            data = inside.read(info)
            if data[128:132] == b"DICM":
                dataset = dcmread(io.BytesIO(data))
                del dataset.PixelSpacing
                buffer = io.BytesIO()
                dataset.save_as(buffer, enforce_file_format=True)
                data = buffer.getvalue()
            outside.writestr(info.filename, data)


def test_exam_without_pixel_spacing_gets_a_failure_row_and_no_image(tiny_cohort, tmp_path):
    """The HIGH defect of issue 18 end to end: no 1 mm guess cached, one failures.csv row."""
    from mimir.imaging.compress import CompressOptions, compress_exams, discover_inputs

    source = min(tiny_cohort.glob("*.zip"))
    batch = tmp_path / "batch"
    batch.mkdir()
    broken = batch / source.name
    _without_pixel_spacing(source, broken)
    cache = tmp_path / "cache"
    summary = compress_exams(discover_inputs([batch]), CompressOptions(cache=cache))
    assert summary.failed == 1
    rows = list(csv.DictReader((cache / "failures.csv").open()))
    assert [(row["subject"], row["stage"]) for row in rows] == [(broken.stem, "header")]
    assert "PixelSpacing (0028,0030) missing in all" in rows[0]["reason"]
    assert not list(cache.rglob("*.npy"))


def test_pydicom_parses_at_most_a_header_sized_prefix_of_a_crafted_member(dicom, monkeypatch):
    """A DICOM-looking start followed by megabytes of zeros: pydicom never walks the zeros."""
    specs = dicom.exam_specs(stations=1)
    files = dicom.exam_files(specs)
    start = files[next(name for name in files if name.endswith(".dcm"))][:140]  # preamble, DICM, a meta element
    files["crafted.dcm"] = start + bytes(4 * 2**20)
    sizes = []
    original = dicom_series.read_partial

    def measured(fileobj, *args, **kwargs):
        sizes.append(len(fileobj.getbuffer()))
        return original(fileobj, *args, **kwargs)

    monkeypatch.setattr(dicom_series, "read_partial", measured)
    exam = read_zip_bytes(dicom.zip_bytes(files))
    assert sizes and max(sizes) <= dicom_series._MAX_HEADER_BYTES
    np.testing.assert_array_equal(exam.stations[0].water, dicom.find(specs, 1, "W").expected())
