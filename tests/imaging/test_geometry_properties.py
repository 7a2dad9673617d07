"""Properties of station placement, resampling, fusion and projection (hypothesis).

Whatever geometry stations have within plausible ranges (slice count and spacing, in-plane
spacing and size, offsets, overlaps and gaps, ordering), compression ends in the 2D format
(3, 256, 256) uint8, or in one of MIMIR's own errors saying what is wrong; never a crash, never
NaN in the fused volume.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from mimir.errors import MimirError
from mimir.imaging.fusion import fuse_stations
from mimir.imaging.projection import build_representation
from mimir.imaging.station import Station
from mimir.protocol import IMAGE_SHAPE, PIXEL_SPACING_MM


@st.composite
def stations(draw: st.DrawFn) -> list[Station]:
    """1-4 stations head to foot with drawn geometry; intensities from a seeded generator."""
    count = draw(st.integers(1, 4))
    rows, cols = draw(st.integers(30, 48)), draw(st.integers(8, 40))
    spacing_in_plane = draw(st.sampled_from([PIXEL_SPACING_MM, PIXEL_SPACING_MM * 1.01, 2.0, 2.5]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    top = 0.0
    made = []
    for _ in range(count):
        slices = draw(st.integers(2, 24))
        slice_spacing = draw(st.sampled_from([3.0, 3.5, 4.0, 4.5, 2.9999, 3.0001, 6.0]))
        x_shift, y_shift = draw(st.floats(-3, 3)), draw(st.floats(-3, 3))
        z = top - slice_spacing * np.arange(slices)
        positions = np.stack([
            np.full(slices, -(cols - 1) / 2 * spacing_in_plane + x_shift),
            np.full(slices, -(rows - 1) / 2 * spacing_in_plane + y_shift),
            z,
        ], axis=1)
        water = rng.uniform(0, 500, (slices, rows, cols)).astype(np.float32)
        fat = rng.uniform(0, 300, (slices, rows, cols)).astype(np.float32)
        made.append(Station(water=water, fat=fat, positions=positions, pixel_spacing=(spacing_in_plane, spacing_in_plane)))
        overlap = draw(st.floats(-12.0, 0.9)) * slice_spacing * slices  # negative: a gap
        top = float(z[-1]) - slice_spacing + max(overlap, -slice_spacing * (slices - 1))
    if draw(st.booleans()):
        made.reverse()  # fusion orders stations itself
    return made


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stations())
def test_any_plausible_geometry_compresses_or_fails_with_a_reason(exam):
    try:
        volume = fuse_stations(exam)
    except MimirError as error:
        event(f"refused: {type(error).__name__}")
        assert str(error)
        return
    assert np.isfinite(volume.water).all() and np.isfinite(volume.fat).all()
    assert volume.water.shape == volume.fat.shape
    try:
        image = build_representation(volume)
    except MimirError as error:
        event(f"refused: {type(error).__name__}")
        assert str(error)
        return
    event("compressed")
    assert image.shape == IMAGE_SHAPE and image.dtype == np.uint8


@settings(max_examples=40, deadline=None)
@given(stations())
def test_fusion_does_not_depend_on_the_order_stations_are_given_in(exam):
    try:
        forward = fuse_stations(exam)
    except MimirError:
        assume(False)
    backward = fuse_stations(list(reversed(exam)))
    np.testing.assert_array_equal(forward.water, backward.water)
    np.testing.assert_array_equal(forward.fat, backward.fat)
