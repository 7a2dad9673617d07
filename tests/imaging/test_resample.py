import numpy as np
import pytest

from mimir.imaging.resample import GeometryError, GridSpec, place_axis, place_station
from mimir.imaging.station import Station
from mimir.protocol import PIXEL_SPACING_MM

S = PIXEL_SPACING_MM


def station(water: np.ndarray, z_positions: np.ndarray, x0: float = 0.0, y0: float = 0.0) -> Station:
    positions = np.stack([np.full(len(z_positions), x0), np.full(len(z_positions), y0), z_positions], axis=1)
    return Station(water=water, fat=water * 0.5, positions=positions, pixel_spacing=(S, S))


def test_on_grid_axis_is_copied_at_its_offset():
    placement = place_axis(np.arange(5, 15, dtype=float) + 0.004)
    assert placement.copied
    assert (placement.start, placement.stop) == (5, 15)


def test_half_voxel_offset_is_resampled():
    placement = place_axis(np.arange(10, dtype=float) + 0.5)
    assert not placement.copied
    # ends round half to even, as numpy's around does in the published pipeline
    assert (placement.start, placement.stop) == (0, 10)


def test_extent_runs_from_the_first_voxel_one_full_step_past_the_last():
    # 44 slices of 4.5 mm starting 10.6 grid slices down: [round(10.6), round(10.6 + 66))
    placement = place_axis(10.6 + np.arange(44) * 1.5)
    assert (placement.start, placement.stop) == (11, 77)
    # grid slice 76 lies past the last centre (75.1): it takes the edge value
    assert placement.lower[-1] + placement.weight[-1] == pytest.approx(43.0)
    # grid slice 11 samples source slice (11 - 10.6) / 1.5
    assert placement.lower[0] + placement.weight[0] == pytest.approx(0.4 / 1.5, abs=1e-6)


def test_off_grid_within_tolerance_is_copied_at_the_rounded_start():
    placement = place_axis(np.arange(-3, 5, dtype=float) - 0.009)
    assert placement.copied and (placement.start, placement.stop) == (-3, 5)


def test_thick_slices_cover_their_extent_on_the_grid():
    # 44 slices of 4.5 mm span 198 mm: 66 slices of 3 mm
    placement = place_axis(np.arange(44) * 1.5)
    assert placement.size == 66


def test_station_on_grid_is_copied_exactly():
    rng = np.random.default_rng(1)
    water = rng.random((6, 8, 10)).astype(np.float32)
    stat = station(water, 30.0 - 3.0 * np.arange(6))
    placed = place_station(stat, GridSpec.anchored_on(stat))
    assert not placed.resampled
    np.testing.assert_array_equal(placed.grid_slices("water", 0, 6), water)
    np.testing.assert_array_equal(placed.grid_slices("fat", 2, 4), water[2:4] * 0.5)


def test_thick_slices_resampled_preserve_a_linear_ramp_in_z():
    z = 100.0 - 4.5 * np.arange(12)
    water = np.broadcast_to(z[:, None, None], (12, 4, 5)).astype(np.float32).copy()
    reference = station(water[:1], z[:1])
    placed = place_station(station(water, z), GridSpec.anchored_on(reference))
    assert placed.resampled
    grid = placed.grid_slices("water", placed.slices.start, placed.slices.stop)
    grid_z = 100.0 - 3.0 * np.arange(placed.slices.start, placed.slices.stop)
    inside = (grid_z <= z[0]) & (grid_z >= z[-1])
    np.testing.assert_allclose(grid[inside, 0, 0], grid_z[inside], atol=1e-3)
    # beyond the last centre but inside the voxel extent: the edge value
    np.testing.assert_allclose(grid[~inside, 0, 0], np.clip(grid_z[~inside], z[-1], z[0]), atol=1e-3)


def test_missing_slice_is_interpolated_along_true_positions():
    z = 50.0 - 3.0 * np.delete(np.arange(10), 4)
    water = np.broadcast_to(z[:, None, None], (9, 3, 3)).astype(np.float32).copy()
    placed = place_station(station(water, z), GridSpec.anchored_on(station(water, z)))
    assert placed.resampled and placed.slices.size == 10
    grid = placed.grid_slices("water", 0, 10)
    np.testing.assert_allclose(grid[:, 1, 1], 50.0 - 3.0 * np.arange(10), atol=1e-4)


def test_in_plane_half_voxel_shift_keeps_a_column_ramp():
    x = np.arange(10) * S
    water = np.broadcast_to(x[None, None, :], (2, 3, 10)).astype(np.float32).copy()
    shifted = station(water + S / 2, np.array([9.0, 6.0]), x0=S / 2)
    placed = place_station(shifted, GridSpec.anchored_on(station(water, np.array([9.0, 6.0]))))
    assert placed.rows.copied and not placed.cols.copied
    values = placed.water[0, 0]
    grid_x = np.arange(placed.cols.start, placed.cols.stop) * S
    inside = (grid_x >= S / 2) & (grid_x <= x[-1] + S / 2)
    np.testing.assert_allclose(values[inside], grid_x[inside], atol=1e-4)


def test_unordered_slices_are_rejected():
    water = np.zeros((3, 2, 2), np.float32)
    with pytest.raises(GeometryError):
        place_station(station(water, np.array([0.0, 3.0, 6.0])), GridSpec(anchor=(0.0, 0.0, 0.0)))
