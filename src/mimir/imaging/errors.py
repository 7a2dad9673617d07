"""The one exception every exam reader raises for input it cannot turn into stations."""

from __future__ import annotations

from enum import StrEnum

from mimir.errors import MimirError


class Stage(StrEnum):
    """Where reading stopped; recorded in failures.csv so bad exams can be triaged by kind."""

    #: The container itself: missing path, not a zip, truncated or corrupt archive, unreadable NIfTI.
    OPEN = "open"
    #: Refused before reading: unsafe member paths, declared sizes beyond limits (zip bombs),
    #: an exam whose headers need more than the memory budget (header_limits.MAX_EXAM_BYTES).
    SAFETY = "safety"
    #: A UK Biobank file name of another field than 20201 (a liver, heart or brain scan), refused
    #: before reading.
    FIELD = "field"
    #: Nothing in the input parsed as a DICOM image slice.
    DICOM = "dicom"
    #: No water or no fat series among the DICOM files.
    SERIES = "series"
    #: Water and fat series that cannot be matched into stations.
    PAIRING = "pairing"
    #: Header values missing, not finite or outside the plausible ranges of header_limits.
    HEADER = "header"
    #: Pixel data that cannot be decoded for (most of) a series.
    PIXELS = "pixels"
    #: Slice geometry the station convention cannot express (oblique, mixed sizes, bad affine).
    GEOMETRY = "geometry"


class ExamReadError(MimirError):
    """An exam that cannot be read; `reason` is one human-readable line."""

    def __init__(self, stage: str, reason: str) -> None:
        self.stage = str(stage)
        self.reason = " ".join(reason.split())
        super().__init__(f"{self.stage}: {self.reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.stage, self.reason))
