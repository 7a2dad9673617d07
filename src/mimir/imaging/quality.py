"""Per-exam image quality for qc.csv: seams, water-fat swaps, body coverage, and flags.

The flags are screening aids, not verdicts: each has one documented threshold below, chosen
so a normal exam raises none and the failure it names raises it clearly. `swap_score` is
1 - the lowest per-station median fat fraction of the body's outer layer (about 0.07 for
normal exams, 0.93 with a swapped station); stations are numbered from 1 (the neck), head to foot, as in quirks.csv.
A station's median fat fraction over the whole body is reported but not used for swaps:
it jumps past 0.5 wherever fat outweighs lean tissue (obese abdomens), swapped or not.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from mimir.imaging.fusion import FusedVolume, SeamInfo
from mimir.imaging.projection import body_threshold, crop_bed
from mimir.imaging.station import Station
from mimir.protocol import STATIONS

logger = logging.getLogger(__name__)

#: Relative difference of the two stations' mean signal over the same slices above which a
#: seam is flagged: 0.6 is a 1.86x gain step (a 2x step scores 0.67), above the up to ~1.6x
#: that receiver gain and coil shading give normal synthetic exams (0.51 at worst seen).
SEAM_COST_THRESHOLD = 0.6
#: Depth in voxels of the body's outer layer (from the left, right and anterior surface):
#: subcutaneous fat, whose fat fraction is high in every body, lean or obese.
SHELL_DEPTH_VOXELS = 2
#: A station whose outer layer has a median fat fraction below this has water and fat
#: exchanged (normal synthetic stations: 0.91-0.93; a swapped one: 0.07). Very lean bodies
#: with a few mm of subcutaneous fat are the risk of false alarms.
SHELL_FAT_FRACTION_MIN = 0.5
#: Crossed channels must correlate better than like channels by this much across a seam to
#: call it a swap (both are near 0 where a seam holds only air and noise).
SWAP_CORRELATION_MARGIN = 0.1
#: A slice contains body when at least this share of its voxels is in the body mask.
BODY_SLICE_MIN_FRACTION = 0.01
#: Share of fused slices that must contain body; fewer means a short or mispositioned exam.
LOW_COVERAGE_SHARE = 0.9
#: Stations of a complete field-20201 exam.
EXPECTED_STATIONS = len(STATIONS)
#: Voxel stride of the quality statistics along slices and columns (they need no more).
_STRIDE = 2


def _joined(values: Sequence[object]) -> str:
    return ";".join(f"{value:.3f}" if isinstance(value, float) else str(value) for value in values)


def seam_cost(seams: Sequence[SeamInfo]) -> float:
    """Worst relative intensity jump over the seams (0 when there are none)."""
    jumps = [seam.intensity_jump for seam in seams if not math.isnan(seam.intensity_jump)]
    return max(jumps, default=0.0)


def exclusive_ranges(volume: FusedVolume) -> list[tuple[int, int]]:
    """Fused slices each station covers without blending."""
    ranges = volume.station_ranges
    exclusive = []
    for index, (start, stop) in enumerate(ranges):
        own_start = max(start, ranges[index - 1][1]) if index > 0 else start
        own_stop = min(stop, ranges[index + 1][0]) if index + 1 < len(ranges) else stop
        exclusive.append((own_start, max(own_start, own_stop)))
    return exclusive


def outer_layer(mask: np.ndarray, depth: int = SHELL_DEPTH_VOXELS) -> np.ndarray:
    """Body voxels within `depth` of the first body voxel met from the patient's right, left and front.

    Only the `depth` voxels from each first body voxel are marked (the voxels before it are
    not body), rather than comparing every voxel's index with the surface.
    """
    near_surface = np.zeros(mask.shape, bool)
    steps = np.arange(depth)
    first_from_right = mask.argmax(axis=2)[..., None] + steps
    last_from_left = mask.shape[2] - 1 - mask[:, :, ::-1].argmax(axis=2)[..., None] - steps
    first_from_front = mask.argmax(axis=1)[:, None, :] + steps[:, None]
    for band, axis in ((first_from_right, 2), (last_from_left, 2), (first_from_front, 1)):
        np.put_along_axis(near_surface, np.clip(band, 0, mask.shape[axis] - 1), True, axis=axis)
    return mask & near_surface


def _median_fraction(water: np.ndarray, fat: np.ndarray) -> float:
    total = water + fat
    defined = total > 0
    return float(np.median(fat[defined] / total[defined])) if defined.any() else math.nan


def station_fat_fractions(
    water: np.ndarray, fat: np.ndarray, mask: np.ndarray, ranges: Sequence[tuple[int, int]], step: int = 1
) -> list[float]:
    """Median fat fraction (0-1) within `mask` over each station's slices (every `step`-th; NaN without any)."""
    medians = []
    for start, stop in ranges:
        rows = slice(start, stop, step)
        inside = mask[rows]
        medians.append(_median_fraction(water[rows][inside], fat[rows][inside]))
    return medians


def swapped_stations(seams: Sequence[SeamInfo], shell_fractions: Sequence[float]) -> list[int]:
    """Stations whose water and fat look exchanged.

    Channel correlations across seams split the stations into two parity groups (a seam
    where crossed channels agree better flips the parity below it): they say which
    stations differ, not which are wrong. The outer-layer fat fraction says that: the
    group whose subcutaneous layer looks lean is swapped (without it, the smaller group).
    A single group is swapped as a whole only when its outer layer looks lean.
    """
    parity = [0]
    for seam in seams:
        flipped = seam.crossed_correlation > seam.direct_correlation + SWAP_CORRELATION_MARGIN
        parity.append(parity[-1] ^ int(flipped))
    groups = [[index for index, side in enumerate(parity) if side == wanted] for wanted in (0, 1)]
    groups = [group for group in groups if group]

    def shell(group: list[int]) -> float:
        values = [shell_fractions[index] for index in group if not math.isnan(shell_fractions[index])]
        return sum(values) / len(values) if values else math.nan

    if len(groups) == 1:
        return groups[0] if shell(groups[0]) < SHELL_FAT_FRACTION_MIN else []
    first, second = groups
    if math.isnan(shell(first)) or math.isnan(shell(second)) or shell(first) == shell(second):
        return min(groups, key=len)
    return first if shell(first) < shell(second) else second


def coverage(mask: np.ndarray) -> dict[str, float]:
    """Share of slices with body and the body share of the first and last slice."""
    per_slice = mask.reshape(mask.shape[0], -1).mean(axis=1)
    return {
        "body_slice_share": float(np.mean(per_slice >= BODY_SLICE_MIN_FRACTION)),
        "body_top_fraction": float(per_slice[0]),
        "body_bottom_fraction": float(per_slice[-1]),
    }


def assess_quality(stations: Sequence[Station], volume: FusedVolume) -> dict[str, object]:
    """One qc.csv row: flat metrics plus `flag`, the ';'-joined problems ('' when fine)."""
    water = crop_bed(volume.water)[:, :, ::_STRIDE]
    fat = crop_bed(volume.fat)[:, :, ::_STRIDE]
    total = water + fat
    mask = total > body_threshold(total[::_STRIDE])
    ranges = exclusive_ranges(volume)
    body_fractions = station_fat_fractions(water, fat, mask, ranges, step=_STRIDE)
    shell_fractions = station_fat_fractions(water, fat, outer_layer(mask), ranges)
    swapped = swapped_stations(volume.seams, shell_fractions)
    defined_shells = [value for value in shell_fractions if not math.isnan(value)]
    cost = seam_cost(volume.seams)
    body = coverage(mask)

    flags = []
    if len(stations) != EXPECTED_STATIONS:
        flags.append("station_count")
    if swapped:
        flags.append("water_fat_swap")
    if cost > SEAM_COST_THRESHOLD:
        flags.append("seam")
    if any(seam.gap > 0 for seam in volume.seams):
        flags.append("gap_between_stations")
    elif any(seam.raw_overlap == 0 for seam in volume.seams):
        flags.append("no_overlap")
    if body["body_slice_share"] < LOW_COVERAGE_SHARE:
        flags.append("low_coverage")
    if flags:
        logger.info("quality flags: %s", ", ".join(flags))

    return {
        "stations_used": len(stations),
        "fused_slices": volume.water.shape[0],
        "fused_length_mm": round(volume.water.shape[0] * volume.spacing[0], 1),
        "overlap_slices": _joined([seam.overlap for seam in volume.seams]),
        "min_raw_overlap_slices": min((seam.raw_overlap for seam in volume.seams), default=0),
        "max_gap_slices": max((seam.gap for seam in volume.seams), default=0),
        "seam_cost": round(cost, 4),
        "seam_costs": _joined([seam.intensity_jump for seam in volume.seams]),
        "station_fat_fraction": _joined(body_fractions),
        "station_shell_fat_fraction": _joined(shell_fractions),
        "swap_score": round(1 - min(defined_shells), 4) if defined_shells else math.nan,
        "swapped_stations": _joined([index + 1 for index in swapped]),
        **{key: round(value, 4) for key, value in body.items()},
        "flag": ";".join(flags),
    }
