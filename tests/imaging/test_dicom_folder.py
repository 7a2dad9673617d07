"""Unzipped DICOM folders go through the same logic as zips."""

from __future__ import annotations

import numpy as np
import pytest

from mimir.imaging.dicom_folder import read_dicom_folder
from mimir.imaging.dicom_series import ReadLimits
from mimir.imaging.errors import ExamReadError
from mimir.imaging.read import ExamInput, read_exam
from mimir.imaging.ukb_zip import read_zip_bytes


def write_folder(root, files):
    for index, (name, data) in enumerate(files.items()):
        path = root / f"series{index % 3}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_nested_folder_reads_like_the_zip(dicom, tmp_path):
    specs = dicom.exam_specs(stations=2)
    dicom.find(specs, 2, "W").corrupt = (1,)
    files = dicom.exam_files(specs)
    folder = write_folder(tmp_path / "exam", files)
    from_folder = read_dicom_folder(folder)
    from_zip = read_zip_bytes(dicom.zip_bytes(files))
    assert len(from_folder.stations) == 2
    for a, b in zip(from_folder.stations, from_zip.stations, strict=True):
        np.testing.assert_array_equal(a.water, b.water)
        np.testing.assert_array_equal(a.fat, b.fat)
        np.testing.assert_allclose(a.positions, b.positions)
    assert from_folder.skipped_files == 1
    assert any("unreadable pixel data" in note for note in from_folder.notes)


def test_read_exam_dispatches_folders(dicom, tmp_path):
    folder = write_folder(tmp_path / "exam", dicom.exam_files(dicom.exam_specs(stations=1)))
    for source in (folder, ExamInput(path=folder, kind="dicom_folder")):
        exam = read_exam(source)
        np.testing.assert_array_equal(exam.stations[0].water, dicom.exam_specs(stations=1)[3].expected())


def test_empty_folder_has_no_dicom(tmp_path):
    with pytest.raises(ExamReadError) as caught:
        read_dicom_folder(tmp_path)
    assert caught.value.stage == "dicom"


def test_folder_of_other_files_has_no_dicom(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(ExamReadError) as caught:
        read_dicom_folder(tmp_path)
    assert caught.value.stage == "dicom"


def test_missing_folder_is_an_open_error(tmp_path):
    with pytest.raises(ExamReadError) as caught:
        read_dicom_folder(tmp_path / "absent")
    assert caught.value.stage == "open"


def test_oversized_file_is_refused(dicom, tmp_path):
    folder = write_folder(tmp_path / "exam", dicom.exam_files(dicom.exam_specs(stations=1)))
    with pytest.raises(ExamReadError) as caught:
        read_dicom_folder(folder, ReadLimits(max_file_bytes=500))
    assert caught.value.stage == "safety"
