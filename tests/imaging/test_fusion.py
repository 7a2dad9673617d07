import numpy as np
import pytest

from mimir.imaging.fusion import FusionError, blend_weights, fuse_stations, trimmed_ranges
from mimir.imaging.station import Station
from mimir.protocol import FOLDING_TRIM_SLICES, PIXEL_SPACING_MM

S = PIXEL_SPACING_MM
TRIM = FOLDING_TRIM_SLICES


def station(water, fat=None, top_z=0.0, spacing=3.0, x_shift=0.0):
    """A station centred in-plane on the isocentre, slices head to foot from `top_z`."""
    water = np.asarray(water, np.float32)
    fat = np.zeros_like(water) if fat is None else np.asarray(fat, np.float32)
    n, rows, cols = water.shape
    z = top_z - spacing * np.arange(n)
    positions = np.stack([np.full(n, -(cols - 1) / 2 * S + x_shift), np.full(n, -(rows - 1) / 2 * S), z], axis=1)
    return Station(water=water, fat=fat, positions=positions, pixel_spacing=(S, S))


def constant(value, slices, rows=6, cols=5):
    return np.full((slices, rows, cols), value, np.float32)


def test_single_station_on_grid_is_copied_and_folding_trimmed():
    rng = np.random.default_rng(0)
    water = rng.random((20, 6, 5)).astype(np.float32)
    fat = rng.random((20, 6, 5)).astype(np.float32)
    volume = fuse_stations([station(water, fat, top_z=90.0)])
    np.testing.assert_array_equal(volume.water, water[TRIM:-TRIM])
    np.testing.assert_array_equal(volume.fat, fat[TRIM:-TRIM])
    assert volume.water.dtype == np.float32
    assert volume.origin[2] == pytest.approx(90.0 - 3.0 * TRIM)
    assert volume.origin[:2] == pytest.approx((-2 * S, -2.5 * S))
    assert volume.station_ranges == [(0, 12)]


def test_trimming_is_symmetric_and_caps_the_overlap():
    assert trimmed_ranges([(0, 20), (8, 30)], max_overlap=8) == [(0, 18), (10, 30)]
    assert trimmed_ranges([(0, 20), (7, 30)], max_overlap=8) == [(0, 18), (10, 30)]
    assert trimmed_ranges([(0, 20), (15, 30)], max_overlap=8) == [(0, 20), (15, 30)]


def test_blend_weights_ramp():
    np.testing.assert_allclose(blend_weights(3), [0.25, 0.5, 0.75])


def test_overlap_is_blended_linearly():
    upper = station(constant(1.0, 20), top_z=0.0)
    lower = station(constant(3.0, 20), top_z=-3.0 * 17)  # grid slices 17..36: overlap 3
    volume = fuse_stations([lower, upper])  # order of the list does not matter
    seam = volume.seams[0]
    assert (seam.overlap, seam.raw_overlap) == (3, 3)
    assert seam.slice_index == 17 - TRIM
    profile = volume.water[:, 2, 2]
    np.testing.assert_allclose(profile[seam.slice_index - 1 : seam.slice_index + 4], [1.0, 1.5, 2.0, 2.5, 3.0], rtol=1e-6)
    assert volume.station_ranges == [(0, 20 - TRIM), (17 - TRIM, 37 - 2 * TRIM)]


def test_long_overlap_is_trimmed_to_eight_slices():
    volume = fuse_stations([station(constant(1.0, 30)), station(constant(1.0, 30), top_z=-3.0 * 16)])
    seam = volume.seams[0]
    assert (seam.raw_overlap, seam.overlap) == (14, 8)
    assert volume.water.shape[0] == 46 - 2 * TRIM


def test_intensity_correction_turns_a_dip_into_the_expected_ramp():
    # both stations lose half their signal in the shared slices (coil edge); gains 1 and 2
    upper, lower = constant(100.0, 20), constant(200.0, 20)
    upper[-4:] *= 0.5
    lower[:4] *= 0.5
    volume = fuse_stations([station(upper), station(lower, top_z=-3.0 * 16)])
    means = volume.water.mean(axis=(1, 2))
    start = volume.seams[0].slice_index
    np.testing.assert_allclose(means[start - 1 : start + 5], [100, 120, 140, 160, 180, 200], rtol=1e-5)


def test_stations_of_fewer_rows_are_centred_with_zero_edges():
    narrow = station(constant(1.0, 12, rows=4), top_z=0.0)
    wide = station(constant(2.0, 12, rows=8), top_z=-3.0 * 12)
    volume = fuse_stations([narrow, wide])
    assert volume.water.shape[1] == 8
    first = volume.water[0]
    np.testing.assert_array_equal(first[2:6], 1.0)
    np.testing.assert_array_equal(first[[0, 1, 6, 7]], 0.0)
    assert volume.seams[0].raw_overlap == 0


def test_thick_station_is_resampled_into_the_fused_volume():
    z_upper = 3.0 * 20
    upper = station(np.broadcast_to((z_upper - 3.0 * np.arange(20))[:, None, None], (20, 6, 5)).copy(), top_z=z_upper)
    lower_z = 12.0 - 4.5 * np.arange(20)
    lower = station(np.broadcast_to(lower_z[:, None, None], (20, 6, 5)).copy(), top_z=float(lower_z[0]), spacing=4.5)
    volume = fuse_stations([upper, lower])
    grid_z = volume.origin[2] - 3.0 * np.arange(volume.water.shape[0])
    inside = grid_z >= lower_z[-1]
    # a linear ramp in z survives resampling, blending and the ramp correction alike
    np.testing.assert_allclose(volume.water[inside, 3, 2], grid_z[inside], rtol=1e-4, atol=1e-3)


def test_short_gap_stays_empty_and_is_noted():
    # the published pipeline fills no gap: the networks saw a black band there
    volume = fuse_stations([station(constant(1.0, 12)), station(constant(3.0, 12), top_z=-3.0 * 14)])
    seam = volume.seams[0]
    assert seam.gap == 2 and seam.overlap == 0
    profile = volume.water[:, 0, 0]
    np.testing.assert_array_equal(profile[seam.slice_index - 3 : seam.slice_index + 1], [1.0, 0.0, 0.0, 3.0])
    assert "gap of 2 slices between stations 0 and 1 (left empty)" in volume.notes


def test_rows_covered_by_one_station_are_faded_against_zero():
    # upper station of 4 rows, lower of 8, overlapping by 3 grid slices
    upper = station(constant(1.0, 12, rows=4), top_z=0.0)
    lower = station(constant(1.0, 12, rows=8), top_z=-3.0 * 9)
    volume = fuse_stations([upper, lower])
    seam = volume.seams[0]
    assert seam.overlap == 3
    blended = volume.water[seam.slice_index : seam.slice_index + 3]
    # footprint means: both stations 1.0, so the mean correction leaves the shared rows at 1
    np.testing.assert_allclose(blended[:, 2:6], 1.0, rtol=1e-6)
    # rows only the lower station covers keep its fade weight 1/4, 2/4, 3/4
    np.testing.assert_allclose(blended[:, 0, 0], [0.25, 0.5, 0.75], rtol=1e-6)
    np.testing.assert_allclose(blended[:, 7, 0], [0.25, 0.5, 0.75], rtol=1e-6)


def test_mean_correction_uses_each_stations_own_footprint():
    # upper: 4 rows at 2.0; lower: 8 rows at 1.0; overlap 1 slice (weights 1/2, 1/2)
    upper = station(constant(2.0, 12, rows=4), top_z=0.0)
    lower = station(constant(1.0, 12, rows=8), top_z=-3.0 * 11)
    volume = fuse_stations([upper, lower])
    seam = volume.seams[0]
    assert seam.overlap == 1
    blended = volume.water[seam.slice_index]
    # target mean 2 + (1 - 2) / 2 = 1.5; faded means 2/2 + 1/2 = 1.5: factor 1
    np.testing.assert_allclose(blended[2:6], 1.5, rtol=1e-6)
    np.testing.assert_allclose(blended[[0, 1, 6, 7]], 0.5, rtol=1e-6)


def test_long_gap_stays_empty():
    volume = fuse_stations([station(constant(1.0, 12)), station(constant(3.0, 12), top_z=-3.0 * 22)])
    seam = volume.seams[0]
    assert seam.gap == 10
    np.testing.assert_array_equal(volume.water[seam.slice_index - 10 : seam.slice_index], 0.0)


def test_seam_records_both_stations_signal_and_channel_agreement():
    rng = np.random.default_rng(3)
    water = rng.random((30, 6, 5)).astype(np.float32)
    fat = rng.random((30, 6, 5)).astype(np.float32)
    upper = station(water[:20], fat[:20])
    lower_normal = station(2 * water[14:], 2 * fat[14:], top_z=-3.0 * 14)
    lower_swapped = station(fat[14:], water[14:], top_z=-3.0 * 14)
    normal = fuse_stations([upper, lower_normal]).seams[0]
    swapped = fuse_stations([upper, lower_swapped]).seams[0]
    assert normal.lower_mean == pytest.approx(2 * normal.upper_mean)
    assert normal.intensity_jump == pytest.approx(2 / 3)
    assert normal.direct_correlation > 0.99 > normal.crossed_correlation
    assert swapped.crossed_correlation > 0.99 > swapped.direct_correlation


def test_station_inside_another_is_refused():
    with pytest.raises(FusionError):
        fuse_stations([station(constant(1.0, 30)), station(constant(1.0, 5), top_z=-3.0 * 10)])


def test_no_stations_is_refused():
    with pytest.raises(FusionError):
        fuse_stations([])


def test_fused_voxel_positions_match_the_station_geometry():
    narrow = constant(0.0, 12, rows=4)
    wide = constant(0.0, 12, rows=8)
    wide[7, 6, 3] = 9.0
    lower = station(wide, top_z=-3.0 * 10)
    volume = fuse_stations([station(narrow, top_z=0.0), lower])
    index = tuple(int(i) for i in np.argwhere(volume.water == 9.0)[0])
    x0, y0, z = lower.positions[7]
    assert volume.voxel_to_lps(index) == pytest.approx((x0 + 3 * S, y0 + 6 * S, z))


def ukb_like_exam(overlap_slices=5):
    """The six field-20201 stations at their nominal sizes and spacings, overlapping a little."""
    from mimir.protocol import COLUMNS, STATIONS

    rng = np.random.default_rng(7)
    stations, top = [], 600.0
    for layout in STATIONS:
        water = rng.integers(0, 1000, (layout.slices, layout.rows, COLUMNS), dtype=np.uint16)
        stations.append(station(water, water[::-1].copy(), top_z=top, spacing=layout.slice_spacing_mm))
        top -= (layout.slices - overlap_slices) * layout.slice_spacing_mm
    return stations


def test_ukb_layout_fuses_onto_the_full_grid():
    from mimir.protocol import COLUMNS, GRID_ROWS

    volume = fuse_stations(ukb_like_exam())
    assert volume.water.shape[1:] == (GRID_ROWS, COLUMNS)
    assert 360 <= volume.water.shape[0] <= 400
    assert all(0 < seam.overlap <= 8 for seam in volume.seams)
    assert volume.notes == []
    starts = [start for start, _ in volume.station_ranges]
    assert starts == sorted(starts) and starts[0] == 0
    # rows missing from the 168-row first station stay empty at both AP edges
    assert not volume.water[0, :3].any() and volume.water[0, 3:171].any()


def test_station_off_the_in_plane_grid_is_noted():
    shifted = station(constant(1.0, 12), top_z=-3.0 * 10, x_shift=0.6 * S)
    volume = fuse_stations([station(constant(1.0, 12)), shifted])
    assert volume.water.shape[2] == 6  # its extent reaches past the centre of a sixth column
    assert volume.notes == ["station 2 is off the in-plane grid and was resampled"]
