import numpy as np
import pytest
from PIL import Image

from mimir.imaging.fusion import FusedVolume
from mimir.imaging.projection import (
    body_threshold,
    build_representation,
    crop_bed,
    encode_fat_fraction,
    fat_fraction,
    half_count_index,
    otsu_threshold,
    resize_bilinear,
    slice_positions,
)
from mimir.protocol import BED_ROWS

SLICES, ROWS, COLS = 64, 54, 40  # rows after the bed crop: 32; concatenated width 72


def volume(water, fat=None):
    fat = np.zeros_like(water) if fat is None else fat
    return FusedVolume(water=water, fat=fat, origin=(0.0, 0.0, 0.0), spacing=(3.0, 2.2, 2.2))


def predicted(index, size_in, size_out=256):
    """Output pixel whose centre samples input coordinate `index` (half-pixel centres)."""
    return (index + 0.5) * size_out / size_in - 0.5


def test_resize_is_bilinear_with_half_pixel_centres():
    np.testing.assert_allclose(resize_bilinear(np.array([[0.0, 1.0]]), (1, 4)), [[0, 0.25, 0.75, 1]])


def test_resize_matches_pillow_bilinear_when_enlarging():
    image = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    pillow = np.asarray(Image.fromarray(image, mode="F").resize((45, 33), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(resize_bilinear(image, (33, 45)), pillow, atol=1e-5)


def bright_centre(view):
    rows, cols = np.nonzero(view > 128)
    return rows.mean(), cols.mean()


def test_cube_lands_where_predicted_in_both_views():
    water = np.zeros((SLICES, ROWS, COLS), np.float32)
    water[10:14, 4:8, 28:32] = 100.0  # near the head, anterior, on the patient's left
    image = build_representation(volume(water))
    width = COLS + ROWS - BED_ROWS
    split = round(256 * COLS / width)
    row, col = bright_centre(image[0, :, :split])
    assert row == pytest.approx(predicted(11.5, SLICES), abs=0.6)
    assert col == pytest.approx(predicted(29.5, width), abs=0.6)
    row, col = bright_centre(image[0, :, split:])
    assert row == pytest.approx(predicted(11.5, SLICES), abs=0.6)
    assert col + split == pytest.approx(predicted(COLS + 5.5, width), abs=0.6)


def test_views_are_min_max_scaled_separately():
    water = np.zeros((SLICES, ROWS, COLS), np.float32)
    water[:, :10, :] = 1.0  # coronal sums 10 per pixel everywhere: a constant view becomes 0
    water[:, :, :5] += 1.0
    image = build_representation(volume(water))
    assert image[0].max() == 255
    assert image[0, :, :100].min() == 0


def test_bed_rows_do_not_reach_the_image():
    rng = np.random.default_rng(1)
    water = rng.random((SLICES, ROWS, COLS)).astype(np.float32)
    fat = rng.random((SLICES, ROWS, COLS)).astype(np.float32)
    with_bed_w, with_bed_f = water.copy(), fat.copy()
    with_bed_w[:, -BED_ROWS:] = 1e4
    with_bed_f[:, -BED_ROWS:] = 7e3
    np.testing.assert_array_equal(build_representation(volume(water, fat)), build_representation(volume(with_bed_w, with_bed_f)))
    assert crop_bed(water).shape == (SLICES, ROWS - BED_ROWS, COLS)


def test_fat_fraction_encoding():
    assert fat_fraction(np.array([3.0, 0.0]), np.array([1.0, 0.0])).tolist() == [250.0, 0.0]
    np.testing.assert_allclose(encode_fat_fraction(np.array([0.0, 250.0, 500.0, 900.0])), [0, 127.5, 255, 255])
    water = np.zeros((SLICES, ROWS, COLS), np.float32)
    fat = np.zeros_like(water)
    water[:, 5:25, 5:35] = 3.0
    fat[:, 5:25, 5:35] = 1.0  # 25 % fat fraction inside the body, nothing outside
    image = build_representation(volume(water, fat))
    assert image[2, 128, 64] in (127, 128)
    assert image[2, 128, 1] == 0


def test_otsu_separates_a_bimodal_sample():
    rng = np.random.default_rng(2)
    dark, bright = rng.normal(10, 1, 5000), rng.normal(50, 2, 3000)
    threshold = otsu_threshold(np.concatenate([dark, bright]))
    assert dark.max() < threshold < bright.min()
    assert otsu_threshold(np.full(10, 4.0)) == 4.0


def test_body_threshold_averages_coronal_slices():
    signal = np.zeros((4, 2, 10), np.float32)
    signal[:, 0, 5:] = 10.0  # row 0: threshold between 0 and 10
    signal[:, 1, 5:] = 30.0  # row 1: between 0 and 30
    threshold = body_threshold(signal)
    assert 0 < threshold < 20
    assert threshold == pytest.approx((otsu_threshold(signal[:, 0]) + otsu_threshold(signal[:, 1])) / 2)


def test_slice_positions_halve_the_body():
    mask = np.zeros((8, 40, 60), bool)
    mask[:, 10:30, 0:40] = True  # patient right occupies columns 0-29 of the first half
    row, col = slice_positions(mask)
    assert row == 19  # cumulative count reaches half after rows 10..19
    assert col == 14  # half of columns 0..29 (first half of 60) reached at column 14
    assert half_count_index(np.zeros(6)) == 3


def test_representation_shape_and_type():
    water = np.random.default_rng(3).random((SLICES, ROWS, COLS)).astype(np.float32)
    image = build_representation(volume(water, water[::-1].copy()))
    assert image.shape == (3, 256, 256) and image.dtype == np.uint8
