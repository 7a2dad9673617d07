"""One entry point for every kind of exam input: zip, DICOM folder, or NIfTI water/fat pair."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mimir.imaging.dicom_folder import read_dicom_folder
from mimir.imaging.dicom_series import ReadLimits
from mimir.imaging.dixon_series import SeriesPatterns
from mimir.imaging.errors import ExamReadError, Stage
from mimir.imaging.nifti import read_nifti_pair
from mimir.imaging.station import ExamStations
from mimir.imaging.ukb_zip import read_zip

__all__ = ["ExamInput", "ExamStations", "read_exam", "input_kind"]

KINDS = ("zip", "dicom_folder", "nifti_pair")


@dataclass(frozen=True)
class ExamInput:
    """Where one exam lives; `fat_path` is the fat volume of a NIfTI pair (`path` is water)."""

    path: Path
    kind: str
    fat_path: Path | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown exam input kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.kind == "nifti_pair" and self.fat_path is None:
            raise ValueError("a nifti_pair input needs fat_path")


def input_kind(path: Path) -> str:
    """Folders are DICOM folders; any other path is read as a zip (which says if it is not one)."""
    return "dicom_folder" if path.is_dir() else "zip"


def read_exam(source: str | Path | ExamInput, water_pattern: str | None = None, fat_pattern: str | None = None) -> ExamStations:
    """Water/fat stations of one exam, head to foot; raises ExamReadError for bad input.

    DICOM water and fat series are found by UK Biobank's descriptions (`..._W`, `..._F`) or by
    ImageType (WATER/FAT, W/F); `water_pattern` and `fat_pattern`, regular expressions searched
    in SeriesDescription, name them in exams that neither marks (see imaging/dixon_series.py).
    """
    patterns = SeriesPatterns(water_pattern, fat_pattern)
    exam = source if isinstance(source, ExamInput) else ExamInput(path=Path(source), kind=input_kind(Path(source)))
    if not exam.path.exists():
        raise ExamReadError(Stage.OPEN, f"no such file or folder: {exam.path}")
    if exam.kind == "zip":
        return read_zip(exam.path, ReadLimits(), patterns)
    if exam.kind == "dicom_folder":
        return read_dicom_folder(exam.path, ReadLimits(), patterns)
    assert exam.fat_path is not None
    return read_nifti_pair(exam.path, exam.fat_path)
