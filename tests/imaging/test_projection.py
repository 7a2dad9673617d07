import numpy as np
import pytest

from mimir.imaging.fusion import FusedVolume
from mimir.imaging.projection import (
    body_mask,
    body_threshold,
    build_representation,
    crop_bed,
    encode_fat_fraction,
    fat_fraction,
    half_count_index,
    normalize_minmax,
    otsu_threshold,
    otsu_thresholds,
    project_mask,
    projection_channel,
    resize_linear_uint8,
    slice_positions,
    truncate_to_uint8,
)
from mimir.protocol import BED_ROWS

SLICES, ROWS, COLS = 64, 54, 40  # rows after the bed crop: 32; concatenated width 72


def volume(water, fat=None):
    fat = np.zeros_like(water) if fat is None else fat
    return FusedVolume(water=water, fat=fat, origin=(0.0, 0.0, 0.0), spacing=(3.0, 2.2, 2.2))


def predicted(index, size_in, size_out=256):
    """Output pixel whose centre samples input coordinate `index` (half-pixel centres)."""
    return (index + 0.5) * size_out / size_in - 0.5


# Expected outputs below were produced by cv2.resize(image, (width, height)) (INTER_LINEAR)
# with OpenCV 4.5.5 and 5.0 alike, as the published pipeline calls it on uint8 images.
SMALL = np.array(
    [
        [34, 32, 204, 127, 151, 153, 182],
        [7, 124, 37, 102, 237, 140, 18],
        [138, 33, 193, 242, 250, 159, 222],
        [94, 37, 130, 113, 169, 254, 70],
        [219, 35, 89, 201, 63, 171, 117],
    ],
    np.uint8,
)
SMALL_TO_3X4 = [[39, 145, 172, 135], [99, 199, 249, 198], [124, 111, 107, 138]]
TINY = np.array([[131, 240, 209, 214], [140, 251, 251, 34], [52, 78, 141, 210]], np.uint8)
TINY_TO_5X7 = [
    [131, 170, 232, 224, 209, 212, 214],
    [134, 174, 236, 235, 220, 172, 142],
    [140, 180, 243, 251, 236, 111, 34],
    [87, 109, 143, 166, 182, 156, 140],
    [52, 61, 76, 109, 146, 185, 210],
]


def test_resize_reproduces_opencv_linear_on_uint8_when_shrinking():
    result = resize_linear_uint8(SMALL, (3, 4))
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, SMALL_TO_3X4)


def test_resize_reproduces_opencv_linear_on_uint8_when_enlarging():
    np.testing.assert_array_equal(resize_linear_uint8(TINY, (5, 7)), TINY_TO_5X7)


def test_resize_is_half_pixel_linear_without_antialiasing():
    # a one-pixel line sampled by no output centre vanishes (no area averaging)
    image = np.zeros((1, 8), np.uint8)
    image[0, 3] = 200  # output centres sample between pixels 1-2 and 5-6
    np.testing.assert_array_equal(resize_linear_uint8(image, (1, 2)), [[0, 0]])
    np.testing.assert_array_equal(resize_linear_uint8(np.array([[0, 255]], np.uint8), (1, 4)), [[0, 64, 191, 255]])


def test_resize_refuses_float_input():
    with pytest.raises(ValueError):
        resize_linear_uint8(np.zeros((4, 4)), (2, 2))


def test_views_are_truncated_not_rounded_before_resizing():
    assert truncate_to_uint8(np.array([127.99, 0.5, 255.0])).tolist() == [127, 0, 255]
    channel = np.zeros((40, 10, 12), np.float32)
    channel[:, :, 4:8] = 1.0  # coronal sum 10: the maximum
    channel[:, :, 8:] = 0.9999  # coronal sum 9.999: 254.97 before the cast
    coronal = truncate_to_uint8(normalize_minmax(channel.sum(axis=1, dtype=np.float64)))
    assert set(np.unique(coronal)) == {0, 254, 255}
    image = projection_channel(channel, (40, 22))  # 12 + 10 columns: resizing is the identity
    np.testing.assert_array_equal(image[:, :12], coronal)
    assert image[20, 9] == 254
    assert not image[:, 12:].any()  # every sagittal pixel sums the same: a constant view is 0


def bright_centre(view):
    rows, cols = np.nonzero(view > 128)
    return rows.mean(), cols.mean()


def test_cube_lands_where_predicted_in_both_views():
    # published orientation: head up; coronal has the patient's right on the image's left,
    # sagittal has anterior on the left; coronal view left of the sagittal view
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


def test_a_projected_mask_covers_exactly_the_pixels_its_signal_would():
    mask = np.zeros((SLICES, ROWS, COLS), bool)
    mask[10:30, 4:12, 20:40] = True  # a uniform box: 255 inside each view, 0 outside
    mask[:, -BED_ROWS:, :] = True  # bed rows never show, as in the image
    water = np.where(mask, 100.0, 0.0).astype(np.float32)
    water[:, -BED_ROWS:, :] = 0.0
    image = build_representation(volume(water))
    projected = project_mask(mask)
    assert projected.shape == (256, 256) and projected.dtype == bool and projected.any()
    np.testing.assert_array_equal(projected, image[0] >= 128)


def test_views_are_min_max_scaled_separately():
    water = np.zeros((SLICES, ROWS, COLS), np.float32)
    water[:, :10, :] = 1.0  # coronal sums 10 per pixel everywhere: a constant view becomes 0
    water[:, :, :5] += 1.0
    image = build_representation(volume(water))
    assert image[0].max() == 255
    assert image[0, :, :100].min() == 0


def test_bed_rows_do_not_reach_the_projections():
    rng = np.random.default_rng(1)
    water = rng.random((SLICES, ROWS, COLS)).astype(np.float32)
    fat = rng.random((SLICES, ROWS, COLS)).astype(np.float32)
    with_bed_w, with_bed_f = water.copy(), fat.copy()
    with_bed_w[:, -BED_ROWS:] = 1e4
    with_bed_f[:, -BED_ROWS:] = 7e3
    plain, with_bed = build_representation(volume(water, fat)), build_representation(volume(with_bed_w, with_bed_f))
    np.testing.assert_array_equal(plain[:2], with_bed[:2])
    assert crop_bed(water).shape == (SLICES, ROWS - BED_ROWS, COLS)


def test_body_threshold_sees_the_bed_rows_and_counts_empty_voxels_as_one():
    # the published pipeline thresholds W + F before the bed crop, with 0 replaced by 1
    water = np.zeros((6, 30, 8), np.float32)
    water[:, 2:8, 2:6] = 100.0
    water[:, -BED_ROWS:, :] = 900.0  # a bright bed raises the mean coronal threshold
    total = water.astype(np.float64)
    total[total == 0] = 1.0
    threshold = float(otsu_thresholds(total, axis=1).mean())
    assert 100.0 < threshold < 900.0
    mask = body_mask(water, np.zeros_like(water))
    np.testing.assert_array_equal(mask, total >= threshold)
    assert not mask[:, 2:8].any()


def test_body_mask_includes_voxels_at_the_threshold():
    water = np.zeros((2, 3, 4), np.float32)
    water[:, :, 2:] = 5.0  # two-valued slices: the threshold is the lower bin's centre
    threshold = otsu_threshold(np.where(water[:, 0] == 0, 1.0, water[:, 0]))
    mask = body_mask(water, np.zeros_like(water))
    assert mask[:, :, 2:].all() and not mask[:, :, :2].any()
    assert threshold < 5.0


def test_fat_fraction_encoding():
    assert fat_fraction(np.array([3.0, 0.0]), np.array([1.0, 0.0])).tolist() == [250.0, 0.0]
    encoded = encode_fat_fraction(np.array([0.0, 250.0, 499.0, 500.0, 900.0]))
    assert encoded.dtype == np.uint8 and encoded.tolist() == [0, 127, 254, 255, 255]  # truncated
    water = np.zeros((SLICES, ROWS, COLS), np.float32)
    fat = np.zeros_like(water)
    water[:, 5:25, 5:35] = 3.0
    fat[:, 5:25, 5:35] = 1.0  # 25 % fat fraction inside the body, nothing outside
    image = build_representation(volume(water, fat))
    assert image[2, 128, 64] == 127
    assert image[2, 128, 1] == 0


def test_otsu_histogram_bins_values_on_edges_as_numpy_does():
    from mimir.imaging.projection import _histogram_bins

    rng = np.random.default_rng(4)
    values = np.concatenate([[0.0, 1000.0], 125.0 * rng.integers(0, 9, 300) / 3, rng.integers(0, 1001, 300)])
    samples = values.astype(np.float32)[None, :]
    bins = _histogram_bins(samples, np.array([0.0]), np.array([1000.0]), 0, 256)
    expected, _ = np.histogram(samples.astype(np.float64), bins=256, range=(0.0, 1000.0))
    np.testing.assert_array_equal(np.bincount(bins.ravel(), minlength=256), expected)


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
    assert row == 20  # rows 10..19 before it hold half the body: the slice just past half
    assert col == 15  # columns 0..14 before it hold half of the right half's (0..29) count
    assert half_count_index(np.array([0, 0, 4, 0, 4, 0])) == 3
    assert half_count_index(np.array([0, 0, 0, 0, 0, 8])) == 0  # never reached before the last slice
    assert half_count_index(np.zeros(6)) == 0


def test_representation_shape_and_type():
    water = np.random.default_rng(3).random((SLICES, ROWS, COLS)).astype(np.float32)
    image = build_representation(volume(water, water[::-1].copy()))
    assert image.shape == (3, 256, 256) and image.dtype == np.uint8
