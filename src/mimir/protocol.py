"""Facts of the UK Biobank body MRI protocol and the MIMIR 2D format.

Both the synthetic cohort (which must look like UK Biobank) and the reader (which must
undo it) import these numbers, so they live once, below every pipeline stage.
"""

from __future__ import annotations

from dataclasses import dataclass

#: In-plane spacing of the acquisition and of the fused grid (mm).
PIXEL_SPACING_MM = 2.23214293
#: Slice spacing of the fused grid (mm).
GRID_SLICE_SPACING_MM = 3.0
#: Columns (left-right) of every station.
COLUMNS = 224
#: Rows (anterior-posterior) of the fused grid: the largest station.
GRID_ROWS = 174
#: Overlaps between stations are trimmed to at most this many slices.
MAX_OVERLAP_SLICES = 8
#: Axial slices removed at each end of the fused volume (folding artefacts).
FOLDING_TRIM_SLICES = 4
#: Most posterior voxel rows (the scanner bed) removed before projecting.
BED_ROWS = 22
#: Shape of the 2D representation the published networks expect.
IMAGE_SHAPE = (3, 256, 256)
#: Version of our implementation of that representation (recorded in caches and modules).
REPRESENTATION_VERSION = "mimir-2d-v1"


@dataclass(frozen=True)
class StationLayout:
    """Nominal geometry of one station, head to foot."""

    rows: int
    slices: int
    slice_spacing_mm: float
    breath_hold: bool

    @property
    def series_stem(self) -> str:
        return "Dixon_BH_17s" if self.breath_hold else "Dixon_noBH"


#: The six stations of field 20201, head to foot (rows AP, slices, slice spacing).
STATIONS: tuple[StationLayout, ...] = (
    StationLayout(rows=168, slices=64, slice_spacing_mm=3.0, breath_hold=False),
    StationLayout(rows=174, slices=44, slice_spacing_mm=4.5, breath_hold=True),
    StationLayout(rows=174, slices=44, slice_spacing_mm=4.5, breath_hold=True),
    StationLayout(rows=174, slices=44, slice_spacing_mm=4.5, breath_hold=True),
    StationLayout(rows=162, slices=72, slice_spacing_mm=3.5, breath_hold=False),
    StationLayout(rows=156, slices=64, slice_spacing_mm=4.0, breath_hold=False),
)

#: Series suffixes of the four Dixon contrasts; only water and fat are used.
SERIES_SUFFIXES = ("W", "F", "in", "opp")
