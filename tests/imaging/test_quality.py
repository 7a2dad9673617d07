import numpy as np
import pytest

from mimir.imaging.fusion import fuse_stations
from mimir.imaging.quality import (
    SEAM_COST_THRESHOLD,
    assess_quality,
    outer_layer,
    swapped_stations,
)
from mimir.imaging.station import Station
from mimir.protocol import PIXEL_SPACING_MM

S = PIXEL_SPACING_MM
SLICES, ROWS, COLS, STEP = 14, 48, 40, 10  # consecutive stations overlap by 4 slices


def body_slices(slices, rng, core_fat=0.05):
    """Lean core (FF 5 %) inside a fat shell (FF 90 %), anterior to the bed rows."""
    row, col = np.mgrid[:ROWS, :COLS]
    radius = ((row - 13) / 10) ** 2 + ((col - 20) / 15) ** 2
    core = ((row - 13) / 7) ** 2 + ((col - 20) / 12) ** 2 <= 1
    shell = (radius <= 1) & ~core
    water = np.where(core, 1 - core_fat, np.where(shell, 0.1, 0.0))
    fat = np.where(core, core_fat, np.where(shell, 0.9, 0.0))
    noise = rng.normal(0, 0.01, (2, slices, ROWS, COLS))
    return (np.abs(water + noise[0]).astype(np.float32), np.abs(fat + noise[1]).astype(np.float32))


def exam(count=6, gains=None, swapped=(), step=STEP, body_until=None, seed=0, core_fat=0.05):
    rng = np.random.default_rng(seed)
    stations = []
    for index in range(count):
        water, fat = body_slices(SLICES, rng, core_fat)
        gain = 1.0 if gains is None else gains[index]
        if index in swapped:
            water, fat = fat, water
        z = -3.0 * step * index - 3.0 * np.arange(SLICES)
        if body_until is not None:
            empty = z < body_until
            air = np.abs(rng.normal(0, 0.01, (2, int(empty.sum()), ROWS, COLS)))
            water[empty], fat[empty] = air[0], air[1]
        positions = np.stack([np.full(SLICES, -(COLS - 1) / 2 * S), np.full(SLICES, -(ROWS - 1) / 2 * S), z], axis=1)
        stations.append(Station(water=water * gain, fat=fat * gain, positions=positions, pixel_spacing=(S, S)))
    return stations


def quality(stations):
    return assess_quality(stations, fuse_stations(stations))


def test_normal_exam_raises_no_flag():
    row = quality(exam())
    assert row["flag"] == ""
    assert row["stations_used"] == 6
    assert row["overlap_slices"] == "4;4;4;4;4"
    assert row["seam_cost"] < 0.05
    assert row["swapped_stations"] == ""
    assert row["body_slice_share"] == 1.0
    assert row["swap_score"] < 0.2


def test_swapped_station_is_flagged_and_named():
    row = quality(exam(swapped=(2,)))
    assert "water_fat_swap" in row["flag"].split(";")
    assert row["swapped_stations"] == "3"  # numbered from 1, as in quirks.csv
    assert row["swap_score"] > 0.8


def test_swapped_whole_exam_is_flagged():
    row = quality(exam(swapped=range(6)))
    assert "water_fat_swap" in row["flag"].split(";")
    assert row["swapped_stations"] == "1;2;3;4;5;6"


def test_fat_rich_body_is_no_swap():
    row = quality(exam(core_fat=0.7))
    assert float(row["station_fat_fraction"].split(";")[0]) > 0.6
    assert row["flag"] == ""


def test_gain_step_is_a_costly_seam():
    matched = quality(exam(gains=[1.0] * 6))
    stepped = quality(exam(gains=[1, 1, 1, 2, 2, 2]))
    assert matched["seam_cost"] < 0.05 < SEAM_COST_THRESHOLD < stepped["seam_cost"]
    assert stepped["seam_cost"] == pytest.approx(2 / 3, abs=0.03)
    assert "seam" in stepped["flag"].split(";")


def test_gap_and_station_count_are_flagged():
    row = quality(exam(count=3, step=16))
    flags = row["flag"].split(";")
    assert "gap_between_stations" in flags and "station_count" in flags
    assert row["max_gap_slices"] == 2


def test_short_body_is_low_coverage():
    row = quality(exam(body_until=-3.0 * 20))
    assert "low_coverage" in row["flag"].split(";")
    assert row["body_bottom_fraction"] == 0.0


def test_outer_layer_is_the_surface_seen_from_right_left_and_front():
    mask = np.zeros((1, 8, 9), bool)
    mask[0, 2:7, 2:8] = True
    layer = outer_layer(mask, depth=1)
    assert layer[0, 2, 2:8].all()  # anterior surface
    assert layer[0, 2:7, 2].all() and layer[0, 2:7, 7].all()  # right and left surfaces
    assert not layer[0, 3:7, 3:7].any()  # interior and posterior (bed side) stay out


def test_two_station_swap_names_the_fatter_station():
    row = quality(exam(count=2, swapped=(1,)))
    assert "water_fat_swap" in row["flag"].split(";")
    assert row["swapped_stations"] == "2"


def test_seam_through_air_is_no_swap_evidence():
    row = quality(exam(count=3, body_until=-3.0 * 11))
    assert "water_fat_swap" not in row["flag"].split(";")


def test_seam_parity_and_outer_layer_name_the_swapped_stations():
    class Seam:
        def __init__(self, flipped):
            self.direct_correlation, self.crossed_correlation = (0.2, 0.9) if flipped else (0.02, 0.05)

    normal, lean = 0.9, 0.1
    assert swapped_stations([Seam(False), Seam(True), Seam(True)], [normal, normal, lean, normal]) == [2]
    # the outer layer, not the group size, decides which side is swapped
    assert swapped_stations([Seam(True)], [lean, normal]) == [0]
    assert swapped_stations([Seam(False), Seam(True)], [lean, lean, normal]) == [0, 1]
    assert swapped_stations([Seam(False)] * 3, [normal] * 4) == []
    assert swapped_stations([Seam(False)] * 2, [lean] * 3) == [0, 1, 2]
    nan = float("nan")
    assert swapped_stations([Seam(True), Seam(True)], [nan, nan, nan]) == [1]


def _outer_layer_by_definition(mask: np.ndarray, depth: int) -> np.ndarray:
    """Voxel by voxel: body within `depth` of the first body voxel from the right, left or front."""
    layer = np.zeros_like(mask)
    for index in zip(*np.nonzero(mask), strict=True):
        slice_, row, col = (int(value) for value in index)
        line = np.flatnonzero(mask[slice_, row])
        column = np.flatnonzero(mask[slice_, :, col])
        layer[index] = col < line[0] + depth or col > line[-1] - depth or row < column[0] + depth
    return layer


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_outer_layer_matches_its_definition_on_random_masks(depth):
    rng = np.random.default_rng(depth)
    for share in (0.05, 0.5, 0.95):
        mask = rng.random((3, 9, 7)) < share
        mask[0, 0] = True  # a row full of body, reaching both edges
        np.testing.assert_array_equal(outer_layer(mask, depth=depth), _outer_layer_by_definition(mask, depth))
