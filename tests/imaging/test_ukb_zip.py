"""Field-20201 zips to stations: the good path, every repair, and every refusal."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest

from mimir.imaging import dicom_series
from mimir.imaging.dicom_series import ReadLimits
from mimir.imaging.dixon_series import contrast_of
from mimir.imaging.errors import ExamReadError
from mimir.imaging.read import ExamInput, read_exam
from mimir.imaging.ukb_zip import is_unsafe_name, read_zip, read_zip_bytes


def read(dicom, specs, **kwargs):
    return read_zip_bytes(dicom.zip_bytes(dicom.exam_files(specs, **kwargs)))


def stage_of(call) -> str:
    with pytest.raises(ExamReadError) as caught:
        call()
    return caught.value.stage


def test_good_exam_gives_paired_stations_head_to_foot(dicom):
    specs = dicom.exam_specs(stations=3)
    exam = read(dicom, specs)
    assert len(exam.stations) == 3
    assert [s.top_z for s in exam.stations] == [100.0, 85.0, 70.0]
    for number, station in enumerate(exam.stations, start=1):
        water, fat = dicom.find(specs, number, "W"), dicom.find(specs, number, "F")
        np.testing.assert_array_equal(station.water, water.expected())
        np.testing.assert_array_equal(station.fat, fat.expected())
        assert station.water.dtype == np.float32
        assert station.series_description == "Dixon_noBH_W"
        np.testing.assert_allclose(station.z_positions, [water.z(i) for i in range(6)])
        np.testing.assert_allclose(station.positions[0, :2], water.origin(), atol=1e-5)
        assert station.pixel_spacing == pytest.approx((dicom.spacing, dicom.spacing))
    assert exam.notes == []
    assert exam.duplicates_dropped == 0
    assert exam.skipped_files == 1  # the manifest


def test_zip_on_disk_and_read_exam_agree(dicom, tmp_path):
    path = tmp_path / "1234567_20201_2_0.zip"
    path.write_bytes(dicom.zip_bytes(dicom.exam_files(dicom.exam_specs(stations=2))))
    direct = read_zip(path)
    for via in (read_exam(path), read_exam(ExamInput(path=path, kind="zip"))):
        assert len(via.stations) == len(direct.stations) == 2
        np.testing.assert_array_equal(via.stations[1].fat, direct.stations[1].fat)


def test_members_in_random_order_are_ordered_by_position(dicom):
    files = dicom.exam_files(dicom.exam_specs(stations=2))
    names = list(files)
    np.random.default_rng(3).shuffle(names)
    exam = read_zip_bytes(dicom.zip_bytes({name: files[name] for name in names}))
    for station in exam.stations:
        assert np.all(np.diff(station.z_positions) < 0)
        assert np.all(np.diff(station.water[:, 0, 0]) == 10)


def test_in_and_opp_series_are_not_decoded(dicom):
    specs = dicom.exam_specs(stations=2)
    for spec in specs:
        if spec.contrast in ("in", "opp"):
            spec.corrupt = tuple(range(spec.slices))
    exam = read(dicom, specs)
    assert len(exam.stations) == 2
    assert exam.notes == []


def test_misspelled_manifest_and_other_files_are_ignored(dicom):
    files = dicom.exam_files(dicom.exam_specs(stations=2), manifest="manifest.cvs")
    files["notes/readme.txt"] = b"not dicom, Aug 30, 2015"
    files["garbage.bin"] = bytes(range(256)) * 40
    exam = read_zip_bytes(dicom.zip_bytes(files))
    assert len(exam.stations) == 2
    assert exam.skipped_files == 3


def test_series_without_uid_are_grouped_by_number_and_description(dicom):
    specs = dicom.exam_specs(stations=2)
    for spec in specs:
        spec.uid = None
    exam = read(dicom, specs)
    assert [s.shape for s in exam.stations] == [(6, 16, 20), (6, 16, 20)]


def test_duplicate_station_keeps_latest_series_time(dicom):
    specs = dicom.exam_specs(stations=2)
    repeat = [
        dicom.replace(spec, number=90 + index, time="093000.000000", base=spec.pixel_base() + 5000, uid=dicom.pydicom.uid.generate_uid())
        for index, spec in enumerate(dicom.station_specs(2, 85.0))
    ]
    for spec in specs:
        if spec.number // 10 == 2:
            spec.time = "110000.000000"  # the lower-numbered series is the later one
    exam = read(dicom, specs + repeat)
    assert len(exam.stations) == 2
    assert exam.duplicates_dropped == 2
    np.testing.assert_array_equal(exam.stations[1].water, dicom.find(specs, 2, "W").expected())
    assert sum("duplicate station" in note for note in exam.notes) == 2


def test_water_fat_size_mismatch_is_cropped_about_the_isocentre(dicom):
    specs = dicom.exam_specs(stations=2)
    fat = dicom.find(specs, 1, "F")
    fat.rows, fat.cols = 20, 24
    exam = read(dicom, specs)
    station = exam.stations[0]
    assert station.water.shape == station.fat.shape == (6, 16, 20)
    np.testing.assert_array_equal(station.fat, fat.expected()[:, 2:18, 2:22])
    np.testing.assert_allclose(station.positions[0, :2], dicom.find(specs, 1, "W").origin(), atol=1e-5)
    assert any("cropped to the common 16x20" in note for note in exam.notes)


def test_larger_water_is_cropped_and_positions_follow(dicom):
    specs = dicom.exam_specs(stations=1)
    water = dicom.find(specs, 1, "W")
    water.rows = 18
    station = read(dicom, specs).stations[0]
    np.testing.assert_array_equal(station.water, water.expected()[:, 1:17])
    expected_y = -(16 - 1) / 2 * dicom.spacing
    assert station.positions[0, 1] == pytest.approx(expected_y, abs=1e-5)


def test_missing_slice_is_noted_and_interpolated(dicom):
    specs = dicom.exam_specs(stations=2)
    for contrast in ("W", "F"):
        dicom.find(specs, 1, contrast).skip = (3,)
    exam = read(dicom, specs)
    station = exam.stations[0]
    assert station.shape == (6, 16, 20)
    np.testing.assert_array_equal(station.water, dicom.find(specs, 1, "W").expected())
    assert station.z_positions[3] == pytest.approx(91.0)
    assert any("1 slices missing" in note for note in exam.notes)
    assert any("linear interpolation" in note for note in station.notes)


def test_corrupt_slice_is_skipped_noted_and_filled(dicom):
    specs = dicom.exam_specs(stations=2)
    dicom.find(specs, 2, "W").corrupt = (2,)
    exam = read(dicom, specs)
    station = exam.stations[1]
    np.testing.assert_array_equal(station.water, dicom.find(specs, 2, "W").expected())
    assert any("unreadable pixel data" in note for note in exam.notes)


def test_edge_slice_missing_in_one_contrast_trims_to_common_positions(dicom):
    specs = dicom.exam_specs(stations=1)
    dicom.find(specs, 1, "F").skip = (5,)
    exam = read(dicom, specs)
    assert exam.stations[0].shape == (5, 16, 20)
    assert any("kept the 5 at common positions" in note for note in exam.notes)


def test_files_failing_strict_parsing_are_read_leniently(dicom):
    specs = dicom.exam_specs(stations=1)
    dicom.find(specs, 1, "W").lenient = (0, 4)
    exam = read(dicom, specs)
    np.testing.assert_array_equal(exam.stations[0].water, dicom.find(specs, 1, "W").expected())
    assert any("lenient" in note for note in exam.notes)


def test_irregular_spacing_is_kept_and_noted(dicom):
    specs = dicom.exam_specs(stations=1, slices=3)
    for contrast in ("W", "F"):
        dicom.find(specs, 1, contrast).skip = ()
    files = dicom.exam_files(specs)
    odd = dicom.replace(dicom.find(specs, 1, "W"), top_z=100.0 - 7.3, slices=1)
    odd_fat = dicom.replace(dicom.find(specs, 1, "F"), top_z=100.0 - 7.3, slices=1)
    files["odd_w.dcm"] = dicom.slice_bytes(odd, 0)
    files["odd_f.dcm"] = dicom.slice_bytes(odd_fat, 0)
    exam = read_zip_bytes(dicom.zip_bytes(files))
    assert exam.stations[0].shape[0] == 4
    assert any("irregular slice spacing" in note for note in exam.notes)


@pytest.mark.parametrize(
    ("make", "stage"),
    [
        (lambda d: b"this is not a zip at all" * 10, "open"),
        (lambda d: d.zip_bytes(d.exam_files(d.exam_specs(stations=1)))[:3000], "open"),
        (lambda d: d.zip_bytes({"manifest.csv": b"a,b\n1,2\n"}), "dicom"),
        (lambda d: d.zip_bytes({}), "dicom"),
    ],
    ids=["not-a-zip", "truncated", "no-dicom", "empty"],
)
def test_unreadable_containers_are_refused(dicom, make, stage):
    assert stage_of(lambda: read_zip_bytes(make(dicom))) == stage


@pytest.mark.parametrize("missing", ["W", "F"])
def test_missing_water_or_fat_series_is_refused(dicom, missing):
    specs = [spec for spec in dicom.exam_specs(stations=2) if spec.contrast != missing]
    assert stage_of(lambda: read(dicom, specs)) == "series"


def test_fat_at_another_position_cannot_be_paired(dicom):
    specs = dicom.exam_specs(stations=2)
    dicom.find(specs, 2, "F").top_z = -300.0
    assert stage_of(lambda: read(dicom, specs)) == "pairing"


def test_water_and_fat_slice_positions_that_disagree_cannot_be_paired(dicom):
    specs = dicom.exam_specs(stations=1)
    dicom.find(specs, 1, "F").top_z = 98.5
    assert stage_of(lambda: read(dicom, specs)) == "pairing"


def test_series_with_unreadable_pixels_is_refused(dicom):
    specs = dicom.exam_specs(stations=2)
    dicom.find(specs, 1, "F").corrupt = tuple(range(6))
    assert stage_of(lambda: read(dicom, specs)) == "pixels"


def test_non_axial_series_is_refused(dicom):
    specs = dicom.exam_specs(stations=1)
    dicom.find(specs, 1, "W").orientation = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    assert stage_of(lambda: read(dicom, specs)) == "geometry"


@pytest.mark.parametrize("name", ["../evil.dcm", "/etc/evil.dcm", "a/../../evil.dcm", "C:/evil.dcm", "..\\evil.dcm"])
def test_unsafe_member_paths_are_refused(dicom, name):
    files = dicom.exam_files(dicom.exam_specs(stations=1))
    files[name] = b"x"
    assert stage_of(lambda: read_zip_bytes(dicom.zip_bytes(files))) == "safety"


def test_safe_names_are_not_flagged():
    assert not is_unsafe_name("1234567_20201_2_0/series..1/slice.dcm")
    assert not is_unsafe_name("manifest.csv")


def test_zip_bomb_declared_size_is_refused_before_reading(dicom):
    files = dicom.exam_files(dicom.exam_specs(stations=1))
    bomb = dicom.declare_size(dicom.zip_bytes(files), "manifest.csv", 0xFFFFFFF0)
    assert stage_of(lambda: read_zip_bytes(bomb)) == "safety"


@pytest.mark.parametrize(
    "limits",
    [ReadLimits(max_files=10), ReadLimits(max_total_bytes=50_000), ReadLimits(max_container_bytes=10_000)],
    ids=["too-many-files", "too-large-in-all", "archive-too-large"],
)
def test_inputs_beyond_limits_are_refused(dicom, tmp_path, limits):
    path = tmp_path / "exam.zip"
    path.write_bytes(dicom.zip_bytes(dicom.exam_files(dicom.exam_specs(stations=2))))
    assert stage_of(lambda: read_zip(path, limits)) == "safety"


def test_missing_zip_path_is_an_open_error(tmp_path):
    assert stage_of(lambda: read_exam(tmp_path / "absent.zip")) == "open"


def test_contrast_is_taken_from_the_series_description_suffix():
    assert contrast_of("Dixon_noBH_W") == "W"
    assert contrast_of("Dixon_BH_17s_F") == "F"
    assert contrast_of("Dixon_BH_17s_opp") is None
    assert contrast_of("Dixon_noBH_in") is None
    assert contrast_of("FAT") is None


def test_exam_read_error_survives_pickling_for_worker_processes():
    error = pickle.loads(pickle.dumps(ExamReadError("pairing", "no fat\nseries")))
    assert (error.stage, error.reason) == ("pairing", "no fat series")
    assert str(error) == "pairing: no fat series"


@pytest.mark.parametrize("implicit_vr", [False, True], ids=["explicit-vr", "implicit-vr"])
def test_header_scan_handles_encodings_without_pydicom(dicom, monkeypatch, implicit_vr):
    specs = dicom.exam_specs(stations=1, implicit_vr=implicit_vr, nested_sequence=True, private_bytes=300)
    data = dicom.zip_bytes(dicom.exam_files(specs))
    assert b"\xfe\xff\xdd\xe0" in dicom.slice_bytes(specs[0], 0)  # an undefined-length sequence was written

    def refuse(*args, **kwargs):
        raise AssertionError("the fast header scan should have handled this file")

    monkeypatch.setattr(dicom_series, "_read_header", refuse)
    monkeypatch.setattr(dicom_series, "read_partial", refuse)
    exam = read_zip_bytes(data)
    np.testing.assert_array_equal(exam.stations[0].water, dicom.find(specs, 1, "W").expected())
    np.testing.assert_array_equal(exam.stations[0].fat, dicom.find(specs, 1, "F").expected())


def test_each_member_is_opened_once_and_never_read_twice(dicom):
    specs = dicom.exam_specs(stations=2)
    files = dicom.exam_files(specs)
    opened: dict[str, int] = {}

    def opener(name):
        def open_stream():
            opened[name] = opened.get(name, 0) + 1
            return io.BytesIO(files[name])

        return open_stream

    def no_second_read():
        raise AssertionError("the header stream should have been read on, not the member re-read")

    members = [dicom_series.Member(name=name, open_stream=opener(name), read_bytes=no_second_read) for name in files]
    exam = dicom_series.read_members(members)
    dicom_files = [name for name in files if name.endswith(".dcm")]
    assert dicom_files and all(opened[name] == 1 for name in dicom_files)
    for number, station in enumerate(exam.stations, start=1):
        np.testing.assert_array_equal(station.water, dicom.find(specs, number, "W").expected())
        np.testing.assert_array_equal(station.fat, dicom.find(specs, number, "F").expected())


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_BZIP2], ids=["stored", "bzip2-via-zipfile"])
def test_every_member_compression_gives_the_same_stations(dicom, compression):
    files = dicom.exam_files(dicom.exam_specs(stations=2))
    deflated = read_zip_bytes(dicom.zip_bytes(files))
    other = read_zip_bytes(dicom.zip_bytes(files, compression=compression))
    for first, second in zip(deflated.stations, other.stations, strict=True):
        np.testing.assert_array_equal(first.water, second.water)
        np.testing.assert_array_equal(first.fat, second.fat)
    assert other.notes == deflated.notes == []


def _water_member(files):
    return next(name for name, data in files.items() if name.endswith(".dcm") and b"_W" in data[:4096])


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_member_with_corrupted_data_is_skipped_and_noted(dicom, compression):
    files = dicom.exam_files(dicom.exam_specs(stations=2))
    victim = _water_member(files)
    data = bytearray(dicom.zip_bytes(files, compression=compression))
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo(victim)
    name_length, extra_length = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"), int.from_bytes(
        data[info.header_offset + 28 : info.header_offset + 30], "little"
    )
    inside = info.header_offset + 30 + name_length + extra_length + info.compress_size - 5
    data[inside] ^= 0xFF  # stored: a pixel changes (CRC mismatch); deflated: a broken stream or CRC
    exam = read_zip_bytes(bytes(data))
    assert any(victim in note and "unreadable" in note for note in exam.notes)
    assert len(exam.stations) == 2  # the slice is filled from its neighbours


def test_member_with_data_shorter_than_declared_is_skipped_and_noted(dicom):
    files = dicom.exam_files(dicom.exam_specs(stations=2))
    victim = _water_member(files)
    data = dicom.declare_size(dicom.zip_bytes(files, compression=zipfile.ZIP_STORED), victim, len(files[victim]) + 10)
    exam = read_zip_bytes(data)
    assert any(victim in note for note in exam.notes)
    assert len(exam.stations) == 2


def test_a_fifo_named_as_a_zip_is_refused_without_being_opened(tmp_path):
    import os

    fifo = tmp_path / "1000001_20201_2_0.zip"
    os.mkfifo(fifo)
    with pytest.raises(ExamReadError, match=r"not a regular file \(a FIFO\)") as caught:
        read_zip(fifo)
    assert caught.value.stage == "open"
    with pytest.raises(ExamReadError, match="no such zip file"):
        read_zip(tmp_path / "absent.zip")
