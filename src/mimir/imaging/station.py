"""The unit every reader produces and fusion consumes: one station's water and fat."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Station:
    """One station of a Dixon exam, in patient (LPS) coordinates.

    Arrays are (slices, rows, columns): slices ordered head to foot (descending z),
    rows anterior to posterior, columns patient right to left, as DICOM stores axial slices.
    """

    water: np.ndarray
    fat: np.ndarray
    #: ImagePositionPatient (x, y, z) in mm of the first voxel of every slice, shape (slices, 3).
    positions: np.ndarray
    #: (row spacing, column spacing) in mm.
    pixel_spacing: tuple[float, float]
    series_description: str = ""
    series_number: int = 0
    #: SeriesTime as HHMMSS.ffffff; used to keep the latest of duplicated stations.
    series_time: str = ""
    #: Problems met while reading that did not stop it (missing or corrupt slices, crops).
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.water.shape)  # type: ignore[return-value]

    @property
    def z_positions(self) -> np.ndarray:
        return self.positions[:, 2]

    @property
    def top_z(self) -> float:
        return float(self.positions[0, 2])


@dataclass
class ExamStations:
    """Every station of one exam as a reader delivers it to fusion.

    Lives beside Station (not in imaging.read) so each reader can return it without
    importing the dispatcher that imports the readers.
    """

    #: Head to foot (descending top z), water and fat paired and cropped to a common size.
    stations: list[Station]
    #: Everything repaired or ignored while reading (duplicates dropped, crops, skipped slices).
    notes: list[str] = field(default_factory=list)
    #: Series dropped because a later series covered the same position (a repeated
    #: station drops one water and one fat series: 2).
    duplicates_dropped: int = 0
    #: Files that were not DICOM image slices or could not be parsed at all.
    skipped_files: int = 0
