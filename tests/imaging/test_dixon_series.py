"""Dixon exams of other studies: water and fat found by ImageType or by the user's patterns,
and a refusal that says what an exam held when neither finds them."""

from __future__ import annotations

import csv
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_files

from mimir.cli import main
from mimir.imaging.cache import load_image
from mimir.imaging.compress import CompressOptions, compress_exam, compress_exams
from mimir.imaging.dixon_series import SeriesPatternError, SeriesPatterns, classify, contrast_of_image_type
from mimir.imaging.errors import ExamReadError
from mimir.imaging.read import ExamInput, read_exam
from mimir.imaging.ukb_zip import read_zip_bytes
from mimir.inference.predict import PredictOptions

#: ImageType of each series of a station as scanners write them for a Dixon acquisition
#: whose series all share one description (so only ImageType tells them apart).
VENDORS = {
    "siemens": {
        "W": ["DERIVED", "PRIMARY", "DIXON", "WATER"],
        "F": ["DERIVED", "PRIMARY", "DIXON", "FAT"],
        "in": ["ORIGINAL", "PRIMARY", "DIXON", "IN_PHASE"],
        "opp": ["ORIGINAL", "PRIMARY", "DIXON", "OPP_PHASE"],
    },
    "philips": {
        "W": ["DERIVED", "PRIMARY", "W", "W"],
        "F": ["DERIVED", "PRIMARY", "F", "F"],
        "in": ["DERIVED", "PRIMARY", "IP", "IP"],
        "opp": ["DERIVED", "PRIMARY", "OP", "OP"],
    },
    "three-values": {
        "W": ["DERIVED", "PRIMARY", "WATER"],
        "F": ["DERIVED", "PRIMARY", "FAT"],
        "in": ["DERIVED", "PRIMARY", "IN_PHASE"],
        "opp": ["DERIVED", "PRIMARY", "OUT_PHASE"],
    },
}


def _pydicom_mr_files() -> list[str]:
    """pydicom's own MR test images (one series in several transfer syntaxes), all local."""
    files = get_testdata_files("MR_small*") + get_testdata_files("MR_truncated.dcm")
    assert len(files) == 9
    return files


def _renamed(dicom, specs, description, image_types=None):
    """The same exam written as another study's: one description for every series, ImageType
    from `image_types` (per contrast) or an unmarked ('OTHER') one."""
    renamed = []
    for spec in specs:
        image_type = image_types[spec.contrast] if image_types else ["ORIGINAL", "PRIMARY", "OTHER"]
        tags = {**spec.tags, "SeriesDescription": description(spec), "ImageType": image_type}
        renamed.append(dicom.replace(spec, tags=tags))
    return renamed


def _same_stations(first, second):
    assert len(first.stations) == len(second.stations)
    for a, b in zip(first.stations, second.stations, strict=True):
        np.testing.assert_array_equal(a.water, b.water)
        np.testing.assert_array_equal(a.fat, b.fat)
        np.testing.assert_allclose(a.positions, b.positions)


def _write_folder(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


@pytest.mark.parametrize("container", ["folder", "zip"])
def test_pydicoms_mr_files_are_reported_as_images_without_a_water_fat_pair(tmp_path, container):
    folder = tmp_path / "exam"
    folder.mkdir()
    for path in _pydicom_mr_files():
        shutil.copy(path, folder)
    source = folder
    if container == "zip":
        source = tmp_path / "exam.zip"
        with zipfile.ZipFile(source, "w") as archive:
            for path in folder.iterdir():
                archive.write(path, path.name)
    with pytest.raises(ExamReadError) as caught:
        read_exam(source)
    assert caught.value.stage == "series"
    assert caught.value.reason.startswith(
        "no water or fat series identified among 9 DICOM images in 1 series: "
        "#1 (no SeriesDescription, ImageType DERIVED\\SECONDARY\\OTHER): 9 images. "
    )
    assert "--water-pattern" in caught.value.reason and "--fat-pattern" in caught.value.reason


def test_pydicoms_mr_files_give_one_readable_failure_row(tmp_path):
    folder = tmp_path / "mr_small"
    folder.mkdir()
    for path in _pydicom_mr_files():
        shutil.copy(path, folder)
    (folder / "README.txt").write_text("not DICOM")
    summary = compress_exams([ExamInput(folder, "dicom_folder")], CompressOptions(cache=tmp_path / "cache"))
    assert summary.failed == 1
    with (tmp_path / "cache" / "failures.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["stage"] for row in rows] == ["series"]
    assert "among 9 DICOM images (and 1 other or unreadable file) in 1 series" in rows[0]["reason"]
    assert "\n" not in rows[0]["reason"]


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_dixon_series_marked_by_image_type_read_as_the_uk_biobank_named_exam(dicom, vendor):
    specs = dicom.exam_specs(stations=2)
    other = _renamed(dicom, specs, lambda spec: f"WB_Dixon_station{spec.number // 10}", VENDORS[vendor])
    expected = read_zip_bytes(dicom.zip_bytes(dicom.exam_files(specs)))
    exam = read_zip_bytes(dicom.zip_bytes(dicom.exam_files(other)))
    _same_stations(exam, expected)
    assert exam.stations[0].series_description == "WB_Dixon_station1"


def test_dixon_contrasts_stored_in_one_series_are_told_apart_by_image_type(dicom):
    specs = dicom.exam_specs(stations=2)
    uids = {station: dicom.pydicom.uid.generate_uid() for station in (1, 2)}
    other = [
        dicom.replace(spec, uid=uids[spec.number // 10], tags={**spec.tags, "SeriesNumber": spec.number // 10 * 100})
        for spec in _renamed(dicom, specs, lambda spec: "mDIXON", VENDORS["philips"])
    ]
    _same_stations(read_zip_bytes(dicom.zip_bytes(dicom.exam_files(other))), read_zip_bytes(dicom.zip_bytes(dicom.exam_files(specs))))
    without_fat = [spec for spec in other if spec.contrast != "F"]
    with pytest.raises(ExamReadError) as caught:
        read_zip_bytes(dicom.zip_bytes(dicom.exam_files(without_fat)))
    assert " in 2 series: #100, #200 'mDIXON' (ImageType DERIVED\\PRIMARY\\IP\\IP): 12 images; " in caught.value.reason


def test_an_exam_of_many_series_is_summarised(dicom):
    specs = [dicom.SeriesSpec(contrast="W", number=number, top_z=100.0 - number * 15.0, stem=f"station{number}") for number in range(1, 11)]
    with pytest.raises(ExamReadError) as caught:
        read_zip_bytes(dicom.zip_bytes(dicom.exam_files(specs)))
    reason = caught.value.reason
    assert reason.startswith("no fat series identified among 60 DICOM images (and 1 other or unreadable file) in 10 series: #1 'station1_W'")
    assert "#6 'station6_W' (ImageType none, taken as water): 6 images; 4 more series. " in reason
    assert "station7" not in reason


def test_other_studys_exam_is_compressed_to_the_uk_biobank_named_exams_image(dicom, tmp_path):
    specs = dicom.exam_specs(stations=3, rows=72, cols=96)
    other = _renamed(dicom, specs, lambda spec: "t1_vibe_dixon_tra", VENDORS["siemens"])
    images = []
    for name, exam_specs in (("ukb", specs), ("other", other)):
        folder = _write_folder(tmp_path / name / "1000001_20201_2_0", dicom.exam_files(exam_specs))
        cache = tmp_path / name / "cache"
        outcome = compress_exam(ExamInput(folder, "dicom_folder"), CompressOptions(cache=cache))
        assert outcome.status == "done", outcome.reason
        images.append(load_image(cache / "1000001_20201_2_0.npy"))
    np.testing.assert_array_equal(images[1], images[0])


def test_fat_fraction_and_phase_maps_are_not_taken_for_fat(dicom):
    specs = dicom.exam_specs(stations=2)
    other = _renamed(dicom, specs, lambda spec: "mDIXON", VENDORS["philips"])
    for station in (1, 2):
        fraction = dicom.SeriesSpec(contrast="F", number=station * 10 + 5, top_z=100.0 - (station - 1) * 15.0, base=9)
        other.append(dicom.replace(fraction, tags={"SeriesDescription": "mDIXON", "ImageType": ["DERIVED", "PRIMARY", "FF", "F"]}))
        other.append(dicom.replace(fraction, number=station * 10 + 6, tags={"SeriesDescription": "mDIXON", "ImageType": ["DERIVED", "PRIMARY", "DIXON", "FAT_FRACTION"]}))
    expected = read_zip_bytes(dicom.zip_bytes(dicom.exam_files(specs)))
    _same_stations(read_zip_bytes(dicom.zip_bytes(dicom.exam_files(other))), expected)


def test_in_and_opposed_phase_series_do_not_stand_in_for_a_missing_fat_series(dicom):
    specs = [spec for spec in dicom.exam_specs(stations=2) if spec.contrast != "F"]
    other = _renamed(dicom, specs, lambda spec: "t1_vibe_dixon_tra", VENDORS["siemens"])
    with pytest.raises(ExamReadError) as caught:
        read_zip_bytes(dicom.zip_bytes(dicom.exam_files(other)))
    reason = caught.value.reason
    assert caught.value.stage == "series"
    assert reason.startswith("no fat series identified among 36 DICOM images (and 1 other or unreadable file) in 6 series: ")
    assert "#10, #20 't1_vibe_dixon_tra' (ImageType ORIGINAL\\PRIMARY\\DIXON\\IN_PHASE): 12 images" in reason
    assert "#13, #23 't1_vibe_dixon_tra' (ImageType DERIVED\\PRIMARY\\DIXON\\WATER, taken as water): 12 images" in reason


@pytest.mark.parametrize(
    ("image_type", "contrast"),
    [
        (["DERIVED", "PRIMARY", "DIXON", "WATER"], "W"),
        (["DERIVED", "PRIMARY", "M", "DIXON", "FAT", "NORM"], "F"),
        (["DERIVED", "PRIMARY", "W", "W"], "W"),
        (["derived", "primary", "f"], "F"),
        (["ORIGINAL", "PRIMARY", "DIXON", "IN_PHASE"], None),
        (["ORIGINAL", "PRIMARY", "DIXON", "OPP_PHASE"], None),
        (["DERIVED", "PRIMARY", "IP", "IP"], None),
        (["DERIVED", "PRIMARY", "FF", "F"], None),
        (["DERIVED", "PRIMARY", "DIXON", "FAT_FRACTION"], None),
        (["DERIVED", "PRIMARY", "WATER_FRACTION", "WATER"], None),
        (["DERIVED", "PRIMARY", "T2_STAR", "W"], None),
        (["DERIVED", "PRIMARY", "WATER", "FAT"], None),
        (["ORIGINAL", "PRIMARY", "M", "ND"], None),
        ([], None),
    ],
)
def test_image_type_marks_water_and_fat_only(image_type, contrast):
    assert contrast_of_image_type(image_type) == contrast


def test_uk_biobank_descriptions_decide_before_image_type():
    swapped = {"SeriesDescription": "Dixon_BH_17s_W", "ImageType": ("DERIVED", "PRIMARY", "DIXON", "FAT")}
    assert classify(swapped, SeriesPatterns()) == "W"
    in_phase = {"SeriesDescription": "Dixon_BH_17s_in", "ImageType": ("ORIGINAL", "PRIMARY", "DIXON", "IN_PHASE")}
    assert classify(in_phase, SeriesPatterns()) is None


def _unmarked_exam(dicom):
    specs = dicom.exam_specs(stations=2)
    names = {"W": "body water", "F": "body fat", "in": "body in phase", "opp": "body opposed"}
    return specs, _renamed(dicom, specs, lambda spec: f"{names[spec.contrast]} {spec.number // 10}")


def test_patterns_name_the_series_neither_descriptions_nor_image_type_mark(dicom, tmp_path):
    specs, other = _unmarked_exam(dicom)
    data = dicom.zip_bytes(dicom.exam_files(other))
    with pytest.raises(ExamReadError) as caught:
        read_zip_bytes(data)
    assert "'body water 1' (ImageType ORIGINAL\\PRIMARY\\OTHER): 6 images" in caught.value.reason
    path = tmp_path / "exam.zip"
    path.write_bytes(data)
    exam = read_exam(path, water_pattern=r"^body water", fat_pattern=r"^body fat")
    _same_stations(exam, read_zip_bytes(dicom.zip_bytes(dicom.exam_files(specs))))


def test_a_pattern_that_matches_nothing_is_named_in_the_reason(dicom, tmp_path):
    _, other = _unmarked_exam(dicom)
    folder = _write_folder(tmp_path / "exam", dicom.exam_files(other))
    with pytest.raises(ExamReadError) as caught:
        read_exam(folder, water_pattern=r"^body water", fat_pattern=r"(?i)^FETT")
    assert caught.value.stage == "series"
    assert caught.value.reason.startswith("no fat series identified among 48 DICOM images")
    assert caught.value.reason.endswith("no SeriesDescription matches the fat pattern '(?i)^FETT'")


def test_a_series_taken_as_both_water_and_fat_is_refused(dicom, tmp_path):
    _, other = _unmarked_exam(dicom)
    folder = _write_folder(tmp_path / "exam", dicom.exam_files(other))
    with pytest.raises(ExamReadError, match=r"is marked as both water and fat \(by the water pattern 'body' and the fat pattern 'fat'\)"):
        read_exam(folder, water_pattern="body", fat_pattern="fat")
    ukb = _write_folder(tmp_path / "ukb", dicom.exam_files(dicom.exam_specs(stations=1)))
    with pytest.raises(ExamReadError, match=r"'Dixon_noBH_F' #12 .* \(by the water pattern 'Dixon' and the built-in fat rules\)"):
        read_exam(ukb, water_pattern="Dixon")


@pytest.mark.parametrize("options", [CompressOptions, PredictOptions])
def test_a_bad_pattern_is_refused_before_any_exam(tmp_path, options):
    with pytest.raises(SeriesPatternError, match=r"the fat pattern '\(' is not a regular expression"):
        options(cache=tmp_path, fat_pattern="(")
    with pytest.raises(SeriesPatternError, match="the water pattern is empty"):
        options(cache=tmp_path, water_pattern="")


def test_compress_command_takes_the_patterns(dicom, tmp_path, capsys):
    specs = dicom.exam_specs(stations=2, rows=72, cols=96)
    folder = _write_folder(tmp_path / "1000001_20201_2_0", dicom.exam_files(_renamed(dicom, specs, lambda spec: f"body {spec.contrast}")))
    cache = tmp_path / "cache"
    assert main(["compress", str(folder), "--cache", str(cache), "--workers", "1"]) == 1
    assert main(["compress", str(folder), "--cache", str(cache), "--workers", "1", "--water-pattern", "W$", "--fat-pattern", "F$"]) == 0
    assert (cache / "1000001_20201_2_0.npy").exists()
    assert main(["compress", str(folder), "--cache", str(cache), "--fat-pattern", "("]) == 2
    assert "the fat pattern '(' is not a regular expression" in capsys.readouterr().err


def test_predict_hands_its_patterns_to_compression(tmp_path, capsys):
    options = PredictOptions(water_pattern="W$", fat_pattern="F$")
    assert options.compression(tmp_path) == CompressOptions(cache=tmp_path, water_pattern="W$", fat_pattern="F$")
    exam = _write_folder(tmp_path / "exam", {"a.dcm": b"x"})
    command = ["predict", str(exam), "--modules", str(tmp_path / "module"), "--out", str(tmp_path / "p.csv")]
    assert main([*command, "--water-pattern", "[a-"]) == 2
    assert "the water pattern '[a-' is not a regular expression" in capsys.readouterr().err
