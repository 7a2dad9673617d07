"""An unzipped folder of DICOM files (any nesting) to water/fat stations, same logic as zips."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from mimir.imaging.dicom_series import Member, ReadLimits, read_members
from mimir.imaging.dixon_series import SeriesPatterns
from mimir.imaging.errors import ExamReadError, Stage
from mimir.imaging.station import ExamStations

logger = logging.getLogger(__name__)


def read_dicom_folder(path: str | Path, limits: ReadLimits = ReadLimits(), patterns: SeriesPatterns = SeriesPatterns()) -> ExamStations:
    """Stations of one exam whose DICOM files lie anywhere under `path`; `patterns` name the
    water and fat series where dixon_series' built-in rules do not."""
    folder = Path(path)
    if not folder.is_dir():
        raise ExamReadError(Stage.OPEN, f"no such folder: {folder}")
    files = _checked_files(folder, limits)
    if not files:
        raise ExamReadError(Stage.DICOM, f"folder {folder} holds no files")
    members = (
        Member(name=str(file.relative_to(folder)), open_stream=partial(file.open, "rb"), read_bytes=file.read_bytes) for file in files
    )
    return read_members(members, container_errors=(OSError,), patterns=patterns)


def _checked_files(folder: Path, limits: ReadLimits) -> list[Path]:
    files: list[Path] = []
    total = 0
    for file in sorted(folder.rglob("*")):
        if not file.is_file():
            continue
        files.append(file)
        if len(files) > limits.max_files:
            raise ExamReadError(Stage.SAFETY, f"folder holds more than {limits.max_files} files")
        size = file.stat().st_size
        if size > limits.max_file_bytes:
            raise ExamReadError(Stage.SAFETY, f"file {file.name} is {size} bytes, above the {limits.max_file_bytes} limit")
        total += size
    if total > limits.max_total_bytes:
        raise ExamReadError(Stage.SAFETY, f"folder holds {total} bytes, above the {limits.max_total_bytes} limit")
    return files
