"""Stations to one water and one fat volume on the common 3 mm grid (shared doc, section 2).

Each station is placed on the grid anchored on the first station (copied when it sits on
the grid, else resampled linearly); overlaps with the next station are trimmed
symmetrically to at most MAX_OVERLAP_SLICES, blended with a linear ramp and rescaled so the
slice mean runs linearly across the seam; gaps stay empty; the ends lose
FOLDING_TRIM_SLICES slices each. Every rule follows the published pipeline
(docs/representation.md), so the networks see the volume they were trained on.
Per seam it also records what quality control needs and only fusion can see: both
stations' signal over the same slices, before blending hides any disagreement.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mimir.errors import MimirError
from mimir.imaging.resample import GridSpec, PlacedStation, place_station
from mimir.imaging.station import Station
from mimir.protocol import FOLDING_TRIM_SLICES, MAX_OVERLAP_SLICES

logger = logging.getLogger(__name__)

class FusionError(MimirError, ValueError):
    """Stations that cannot be fused into one volume."""


@dataclass
class SeamInfo:
    """The boundary between station `upper` and station `upper + 1`."""

    upper: int
    #: Fused slice index where the lower station starts contributing (first blended slice,
    #: or the first slice after a gap).
    slice_index: int
    #: Slices blended after trimming (0 when the stations only touch or leave a gap).
    overlap: int
    #: Overlap on the grid before trimming; negative values are gaps.
    raw_overlap: int
    #: Mean water + fat of each station over the slices compared across the seam: the
    #: blended overlap, or the two slices either side of it when there is none.
    upper_mean: float = math.nan
    lower_mean: float = math.nan
    #: Mean Pearson correlation of like channels (water-water, fat-fat) across the seam and
    #: of crossed channels (water-fat, fat-water): crossed above direct means one of the two
    #: stations has water and fat exchanged.
    direct_correlation: float = math.nan
    crossed_correlation: float = math.nan

    @property
    def gap(self) -> int:
        return max(0, -self.raw_overlap)

    @property
    def intensity_jump(self) -> float:
        """Relative difference of the two stations' signal across the seam (0 = matched)."""
        total = self.upper_mean + self.lower_mean
        if not total > 0:
            return math.nan
        return abs(self.lower_mean - self.upper_mean) / (total / 2)


@dataclass
class FusedVolume:
    """Water and fat on the grid: float32 (slices, rows, cols), head to foot, anterior to posterior, right to left."""

    water: np.ndarray
    fat: np.ndarray
    #: LPS (x, y, z) in mm of voxel (0, 0, 0).
    origin: tuple[float, float, float]
    #: (slice, row, column) spacing in mm; z decreases with the slice index.
    spacing: tuple[float, float, float]
    seams: list[SeamInfo] = field(default_factory=list)
    #: Fused slice range [start, stop) each station contributes to, blended slices included,
    #: clipped to the volume after the folding trim.
    station_ranges: list[tuple[int, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.water.shape)  # type: ignore[return-value]

    def voxel_to_lps(self, index: tuple[float, float, float]) -> tuple[float, float, float]:
        """LPS position in mm of voxel (slice, row, column)."""
        slice_index, row, col = index
        x0, y0, z0 = self.origin
        slice_step, row_step, col_step = self.spacing
        return (x0 + col * col_step, y0 + row * row_step, z0 - slice_index * slice_step)


@dataclass
class _Canvas:
    """The untrimmed fused grid: offsets of grid index 0 and the output arrays."""

    slice_offset: int
    row_offset: int
    col_offset: int
    water: np.ndarray
    fat: np.ndarray

    def footprint(self, placed: PlacedStation) -> tuple[slice, slice]:
        rows = slice(placed.rows.start - self.row_offset, placed.rows.stop - self.row_offset)
        cols = slice(placed.cols.start - self.col_offset, placed.cols.stop - self.col_offset)
        return rows, cols

    def station_slices(self, placed: PlacedStation, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Grid slices [start, stop) of one station as full-grid float32 arrays (zero outside it)."""
        rows, cols = self.footprint(placed)
        shape = (stop - start, *self.water.shape[1:])
        water = np.zeros(shape, np.float32)
        fat = np.zeros(shape, np.float32)
        placed.grid_slices("water", start, stop, out=water[:, rows, cols])
        placed.grid_slices("fat", start, stop, out=fat[:, rows, cols])
        return water, fat

    def coverage(self, placed: PlacedStation) -> np.ndarray:
        mask = np.zeros(self.water.shape[1:], bool)
        mask[self.footprint(placed)] = True
        return mask


def _canvas(placed: Sequence[PlacedStation]) -> _Canvas:
    slice_offset = min(p.slices.start for p in placed)
    row_offset = min(p.rows.start for p in placed)
    col_offset = min(p.cols.start for p in placed)
    shape = (
        max(p.slices.stop for p in placed) - slice_offset,
        max(p.rows.stop for p in placed) - row_offset,
        max(p.cols.stop for p in placed) - col_offset,
    )
    return _Canvas(slice_offset, row_offset, col_offset, np.zeros(shape, np.float32), np.zeros(shape, np.float32))


def trimmed_ranges(ranges: Sequence[tuple[int, int]], max_overlap: int = MAX_OVERLAP_SLICES) -> list[tuple[int, int]]:
    """Station slice ranges with every overlap cut to `max_overlap`, half from each station.

    An odd excess costs the lower station the extra slice.
    """
    trimmed = [list(bounds) for bounds in ranges]
    for upper in range(len(trimmed) - 1):
        excess = trimmed[upper][1] - trimmed[upper + 1][0] - max_overlap
        if excess > 0:
            trimmed[upper][1] -= excess // 2
            trimmed[upper + 1][0] += excess - excess // 2
    return [(start, stop) for start, stop in trimmed]


def blend_weights(overlap: int) -> np.ndarray:
    """Weight of the lower station on each overlap slice: 1/(n+1) ... n/(n+1)."""
    return np.arange(1, overlap + 1, dtype=np.float32) / (overlap + 1)


def _check_order(ranges: Sequence[tuple[int, int]]) -> None:
    for upper, (above, below) in enumerate(itertools.pairwise(ranges)):
        if below[0] <= above[0] or below[1] <= above[1]:
            raise FusionError(
                f"station {upper + 2} does not extend below station {upper + 1}: grid slices {above} and {below}"
            )


def _exclusive_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Slices each station covers alone; every station must keep at least one."""
    exclusive = []
    for index, (start, stop) in enumerate(ranges):
        own_start = max(start, ranges[index - 1][1]) if index > 0 else start
        own_stop = min(stop, ranges[index + 1][0]) if index + 1 < len(ranges) else stop
        if own_stop <= own_start:
            raise FusionError(f"station {index + 1} is covered entirely by its neighbours")
        exclusive.append((own_start, own_stop))
    return exclusive


def _dot(first: np.ndarray, second: np.ndarray) -> float:
    """Inner product without BLAS: a BLAS call leaves its thread pool spinning on the other
    cores for a while after it returns, which cost more CPU per exam than all of fusion."""
    return float(np.einsum("i,i->", first, second))


def _correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson correlation on every other voxel: plenty of samples for a sign decision."""
    first = first.ravel()[::2].astype(np.float64)
    second = second.ravel()[::2].astype(np.float64)
    first -= first.mean()
    second -= second.mean()
    norm = math.sqrt(_dot(first, first) * _dot(second, second))
    return _dot(first, second) / norm if norm > 0 else math.nan


def _mean_of_defined(values: Sequence[float]) -> float:
    defined = [value for value in values if not math.isnan(value)]
    return sum(defined) / len(defined) if defined else math.nan


def _compare_across(seam: SeamInfo, upper: tuple[np.ndarray, np.ndarray], lower: tuple[np.ndarray, np.ndarray]) -> None:
    """Fill the seam's intensity and channel-agreement fields from both stations' slices."""
    (upper_water, upper_fat), (lower_water, lower_fat) = upper, lower
    seam.upper_mean = float(upper_water.mean(dtype=np.float64) + upper_fat.mean(dtype=np.float64))
    seam.lower_mean = float(lower_water.mean(dtype=np.float64) + lower_fat.mean(dtype=np.float64))
    seam.direct_correlation = _mean_of_defined([_correlation(upper_water, lower_water), _correlation(upper_fat, lower_fat)])
    seam.crossed_correlation = _mean_of_defined([_correlation(upper_water, lower_fat), _correlation(upper_fat, lower_water)])


def _footprint_mean(slice_: np.ndarray, area: int) -> float:
    """Mean of a full-grid slice over one station's in-plane footprint (zero outside it)."""
    return float(slice_.sum(dtype=np.float64)) / area


def _ramp_factors(
    upper_faded: np.ndarray, lower_faded: np.ndarray, upper_area: int, lower_area: int, start_mean: float, end_mean: float
) -> np.ndarray:
    """Per overlap slice, the factor that puts the blended mean on the line between the bounding slices.

    Means are taken per station over its own footprint, and the blended slice's mean is the
    sum of the two faded stations' means: the published correction, which for stations of
    different row counts is not the mean over the fused grid.
    """
    count = len(upper_faded)
    targets = start_mean + (end_mean - start_mean) * np.arange(1, count + 1) / (count + 1)
    current = upper_faded.reshape(count, -1).sum(axis=1, dtype=np.float64) / upper_area
    current += lower_faded.reshape(count, -1).sum(axis=1, dtype=np.float64) / lower_area
    floor = 1e-6 * max(abs(start_mean), abs(end_mean))
    return np.where(current > floor, targets / np.where(current > floor, current, 1.0), 1.0).astype(np.float32)


def _blend_overlap(
    canvas: _Canvas, upper: PlacedStation, lower: PlacedStation, start: int, stop: int, seam: SeamInfo
) -> None:
    """Write the blended, mean-corrected overlap [start, stop) (grid slices) into the canvas.

    Each station is faded across the overlap and the two are added, also where only one of
    them covers a voxel in-plane (a station of fewer rows): there the other contributes zero.
    """
    upper_water, upper_fat = canvas.station_slices(upper, start, stop)
    lower_water, lower_fat = canvas.station_slices(lower, start, stop)
    upper_cover, lower_cover = canvas.coverage(upper), canvas.coverage(lower)
    upper_area, lower_area = int(upper_cover.sum()), int(lower_cover.sum())
    common = upper_cover & lower_cover
    _compare_across(seam, (upper_water[:, common], upper_fat[:, common]), (lower_water[:, common], lower_fat[:, common]))
    weights = blend_weights(stop - start)[:, None, None]
    before_water, before_fat = canvas.station_slices(upper, start - 1, start)
    after_water, after_fat = canvas.station_slices(lower, stop, stop + 1)
    target = slice(start - canvas.slice_offset, stop - canvas.slice_offset)
    for upper_part, lower_part, before, after, out in (
        (upper_water, lower_water, before_water, after_water, canvas.water),
        (upper_fat, lower_fat, before_fat, after_fat, canvas.fat),
    ):
        upper_part *= 1 - weights
        lower_part *= weights
        factors = _ramp_factors(
            upper_part,
            lower_part,
            upper_area,
            lower_area,
            _footprint_mean(before, upper_area),
            _footprint_mean(after, lower_area),
        )
        upper_part += lower_part
        upper_part *= factors[:, None, None]
        out[target] = upper_part


def _compare_facing(canvas: _Canvas, upper: PlacedStation, lower: PlacedStation, last: int, first: int, seam: SeamInfo) -> None:
    """Stations that only touch or leave a gap: compare the facing slices (the gap stays empty)."""
    upper_slices = canvas.station_slices(upper, last, last + 1)
    lower_slices = canvas.station_slices(lower, first, first + 1)
    common = canvas.coverage(upper) & canvas.coverage(lower)
    _compare_across(
        seam,
        (upper_slices[0][:, common], upper_slices[1][:, common]),
        (lower_slices[0][:, common], lower_slices[1][:, common]),
    )


def fuse_stations(stations: Sequence[Station]) -> FusedVolume:
    """Fuse an exam's stations (any order; sorted head to foot here) into one volume."""
    if not stations:
        raise FusionError("no stations to fuse")
    ordered = sorted(stations, key=lambda station: -station.top_z)
    grid = GridSpec.anchored_on(ordered[0])
    placed = [place_station(station, grid) for station in ordered]
    raw_ranges = [(p.slices.start, p.slices.stop) for p in placed]
    _check_order(raw_ranges)
    ranges = trimmed_ranges(raw_ranges)
    exclusive = _exclusive_ranges(ranges)
    canvas = _canvas(placed)
    notes = [
        f"station {index + 1} is off the in-plane grid and was resampled"
        for index, station in enumerate(placed)
        if not (station.rows.copied and station.cols.copied)
    ]

    for station, (start, stop) in zip(placed, exclusive, strict=True):
        rows, cols = canvas.footprint(station)
        target = slice(start - canvas.slice_offset, stop - canvas.slice_offset)
        station.grid_slices("water", start, stop, out=canvas.water[target, rows, cols])
        station.grid_slices("fat", start, stop, out=canvas.fat[target, rows, cols])

    seams = []
    for upper in range(len(placed) - 1):
        (_, upper_stop), (lower_start, _) = ranges[upper], ranges[upper + 1]
        raw_overlap = raw_ranges[upper][1] - raw_ranges[upper + 1][0]
        seam = SeamInfo(upper=upper, slice_index=lower_start, overlap=max(0, upper_stop - lower_start), raw_overlap=raw_overlap)
        if seam.overlap > 0:
            _blend_overlap(canvas, placed[upper], placed[upper + 1], lower_start, upper_stop, seam)
        else:
            _compare_facing(canvas, placed[upper], placed[upper + 1], upper_stop - 1, lower_start, seam)
            if seam.gap:
                notes.append(f"gap of {seam.gap} slices between stations {upper} and {upper + 1} (left empty)")
            else:
                notes.append(f"no overlap between stations {upper} and {upper + 1}")
        seams.append(seam)

    for note in notes:
        logger.info("%s", note)
    return _trim_folding(canvas, grid, seams, ranges, notes)


def _trim_folding(
    canvas: _Canvas, grid: GridSpec, seams: list[SeamInfo], ranges: Sequence[tuple[int, int]], notes: list[str]
) -> FusedVolume:
    total = canvas.water.shape[0]
    if total <= 2 * FOLDING_TRIM_SLICES:
        raise FusionError(f"fused volume of {total} slices is too short for the folding trim")
    first = canvas.slice_offset + FOLDING_TRIM_SLICES
    kept = total - 2 * FOLDING_TRIM_SLICES
    for seam in seams:
        seam.slice_index -= first
    station_ranges = [(min(max(start - first, 0), kept), min(max(stop - first, 0), kept)) for start, stop in ranges]
    x0, y0, z0 = grid.anchor
    slice_step, row_step, col_step = grid.spacing
    origin = (x0 + canvas.col_offset * col_step, y0 + canvas.row_offset * row_step, z0 - first * slice_step)
    inner = slice(FOLDING_TRIM_SLICES, total - FOLDING_TRIM_SLICES)
    return FusedVolume(
        water=canvas.water[inner],
        fat=canvas.fat[inner],
        origin=origin,
        spacing=grid.spacing,
        seams=seams,
        station_ranges=station_ranges,
        notes=notes,
    )
