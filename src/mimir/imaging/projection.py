"""The fused volume to the (3, 256, 256) uint8 image the published networks expect (shared doc, section 3).

docs/representation.md lists the facts of the published pipeline this module reproduces.
Orientation (array conventions: slices head to foot, rows anterior to posterior, columns
patient right to left): every view has the head at the top. The coronal view keeps the
column order, so the patient's right is on the image's left. The sagittal view keeps the
row order, so anterior is on the left. Coronal views sit on the left half, sagittal views
on the right; channels are water, fat, fat fraction.

Quantisation follows the published pipeline: each view is truncated to uint8 *before* the
two are concatenated and resized, and the resize is OpenCV's INTER_LINEAR on 8-bit images
(half-pixel centres, no antialiasing, 11-bit fixed-point weights), reproduced bit-exactly
by `resize_linear_uint8`.
"""

from __future__ import annotations

import numpy as np

from mimir.errors import MimirError
from mimir.imaging.fusion import FusedVolume
from mimir.protocol import BED_ROWS, IMAGE_SHAPE

#: Histogram bins of the Otsu threshold (scikit-image's default, which the published code used).
OTSU_BINS = 256
#: Fat fraction (per mille) that maps to 255 in channel 2: the channel covers 0-50 %.
FAT_FRACTION_FULL_SCALE = 500.0
#: Voxels quantised at a time while building Otsu histograms (keeps temporaries in cache).
_OTSU_CHUNK_VOXELS = 1 << 20
#: Values whose float32 bin position lies this close to a bin edge are binned again in float64.
_EDGE_MARGIN_BINS = 1e-3
#: Fixed-point precision of OpenCV's linear resize weights on 8-bit images.
_RESIZE_COEF_BITS = 11


class ProjectionError(MimirError, ValueError):
    """A volume that cannot give the 2D representation."""


def crop_bed(array: np.ndarray, bed_rows: int = BED_ROWS) -> np.ndarray:
    """Drop the most posterior rows (the scanner bed); a view, no copy."""
    if array.shape[1] <= bed_rows:
        raise ProjectionError(f"{array.shape[1]} rows leave nothing after cropping {bed_rows} bed rows")
    return array[:, : array.shape[1] - bed_rows, :]


def _linear_taps(size_in: int, size_out: int, clamp_weights: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and integer weights (summing to 2048) of each output pixel along one axis.

    Positions use half-pixel centres computed in float32 as OpenCV does. Along columns,
    positions outside the image take the edge pixel with full weight; along rows OpenCV only
    clamps the indices and keeps the fractional weights (`clamp_weights` False).
    """
    scale = size_in / size_out
    position = ((np.arange(size_out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    lower = np.floor(position).astype(np.intp)
    fraction = (position - lower.astype(np.float32)).astype(np.float32)
    if clamp_weights:
        outside = (lower < 0) | (lower >= size_in - 1)
        fraction[outside] = 0.0
        lower = np.clip(lower, 0, size_in - 1)
    one = np.float32(1 << _RESIZE_COEF_BITS)
    weight_lower = np.rint((np.float32(1.0) - fraction) * one).astype(np.int64)
    weight_upper = np.rint(fraction * one).astype(np.int64)
    return np.clip(lower, 0, size_in - 1), np.clip(lower + 1, 0, size_in - 1), weight_lower, weight_upper


def resize_linear_uint8(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a 2D uint8 image to `shape` (rows, cols) exactly as OpenCV's INTER_LINEAR does.

    Horizontal pass in exact integers; vertical pass with the rounding of OpenCV's SIMD
    kernel (the path every output row of width 256 takes): each row sum is shifted right by
    4, multiplied by its weight keeping the high 16 bits, and the total rounded by 2 bits.
    """
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ProjectionError(f"expected a 2D uint8 image, got {image.dtype} {image.shape}")
    source = image.astype(np.int64)
    left, right, weight_left, weight_right = _linear_taps(image.shape[1], shape[1], clamp_weights=True)
    horizontal = source[:, left] * weight_left + source[:, right] * weight_right
    top, bottom, weight_top, weight_bottom = _linear_taps(image.shape[0], shape[0], clamp_weights=False)
    vertical = ((horizontal[top] >> 4) * weight_top[:, None]) >> 16
    vertical += ((horizontal[bottom] >> 4) * weight_bottom[:, None]) >> 16
    return np.clip((vertical + 2) >> 2, 0, 255).astype(np.uint8)


def truncate_to_uint8(image: np.ndarray) -> np.ndarray:
    """Values in [0, 255] to uint8 by truncation, as numpy's cast does (not rounding)."""
    return np.clip(image, 0, 255).astype(np.uint8)


def normalize_minmax(view: np.ndarray) -> np.ndarray:
    """Scale a view to 0-255 (float) by its own minimum and maximum (a constant view becomes 0)."""
    view = view.astype(np.float64)
    low, high = float(view.min()), float(view.max())
    if high <= low:
        return np.zeros_like(view)
    return (view - low) / (high - low) * 255.0


def _histogram_bins(chunk: np.ndarray, low: np.ndarray, high: np.ndarray, slice_axis: int, bins: int) -> np.ndarray:
    """Bin of every value as numpy.histogram assigns it over its slice's [low, high] (float64 edges).

    A float32 guess floor((x - low) * bins / span) is right except within rounding of a bin
    edge; only those few values are redone as numpy does: float64 guess, then compared
    against the edges themselves.
    """
    span = np.where(high > low, high - low, 1.0)
    along = [1] * chunk.ndim
    along[slice_axis] = -1
    scaled = chunk - low.astype(np.float32).reshape(along)
    scaled *= (bins / span).astype(np.float32).reshape(along)
    guess = scaled.astype(np.intp)
    np.clip(guess, 0, bins - 1, out=guess)
    scaled -= np.rint(scaled)
    np.abs(scaled, out=scaled)
    near_edge = scaled < _EDGE_MARGIN_BINS
    if near_edge.any():
        # The slice of each selected value, read through a broadcast index array: the same
        # order as np.nonzero, without building an index array per axis of the chunk.
        slice_of = np.broadcast_to(np.arange(chunk.shape[slice_axis]).reshape(along), chunk.shape)
        slices = slice_of[near_edge]
        values = chunk[near_edge].astype(np.float64)
        exact = ((values - low[slices]) * (bins / span[slices])).astype(np.intp)
        np.clip(exact, 0, bins - 1, out=exact)
        step = span[slices] / bins
        exact -= values < low[slices] + exact * step
        exact += (values >= low[slices] + (exact + 1) * step) & (exact < bins - 1)
        guess[near_edge] = exact
    return guess


def otsu_thresholds(samples: np.ndarray, axis: int = 0, bins: int = OTSU_BINS) -> np.ndarray:
    """Otsu's threshold of every slice of `samples` along `axis`, all slices at once.

    Same result as scikit-image's threshold_otsu on each slice: a 256-bin histogram over
    the slice's [min, max], the threshold is the centre of the last background bin, a
    constant slice gets its value. The array is read in its own layout (no transposed
    copy), which matters on a 14-million-voxel volume.
    """
    samples = np.asarray(samples, dtype=np.float32)
    others = tuple(other for other in range(samples.ndim) if other != axis)
    count = samples.shape[axis]
    along = [1] * samples.ndim
    along[axis] = count
    low = samples.min(axis=others).astype(np.float64)
    high = samples.max(axis=others).astype(np.float64)
    bin_base = (np.arange(count, dtype=np.intp) * bins).reshape(along)
    histogram = np.zeros(count * bins, dtype=np.int64)
    chunk_axis = others[0]
    step = max(1, _OTSU_CHUNK_VOXELS // max(1, samples.size // samples.shape[chunk_axis]))
    for start in range(0, samples.shape[chunk_axis], step):
        chunk = samples[(slice(None),) * chunk_axis + (slice(start, start + step),)]
        quantised = _histogram_bins(chunk, low, high, axis, bins)
        quantised += bin_base
        histogram += np.bincount(quantised.ravel(), minlength=count * bins)
    histogram = histogram.reshape(count, bins).astype(np.float64)
    edges = low[:, None] + np.arange(bins + 1)[None, :] * ((high - low) / bins)[:, None]
    edges[:, -1] = high
    centres = (edges[:, :-1] + edges[:, 1:]) / 2
    weighted = histogram * centres
    background = np.cumsum(histogram, axis=1)
    foreground = np.cumsum(histogram[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        background_mean = np.cumsum(weighted, axis=1) / background
        foreground_mean = np.cumsum(weighted[:, ::-1], axis=1)[:, ::-1] / foreground
        between = background[:, :-1] * foreground[:, 1:] * (background_mean[:, :-1] - foreground_mean[:, 1:]) ** 2
    best = np.argmax(np.nan_to_num(between, nan=-1.0), axis=1)
    thresholds = centres[np.arange(count), best]
    return np.where(high > low, thresholds, low)


def otsu_threshold(values: np.ndarray, bins: int = OTSU_BINS) -> float:
    """Otsu's threshold of any array of values."""
    return float(otsu_thresholds(np.ravel(values)[None, :], axis=0, bins=bins)[0])


def body_threshold(signal: np.ndarray) -> float:
    """Mean over coronal slices (one per row) of each slice's Otsu threshold of `signal`."""
    return float(otsu_thresholds(signal, axis=1).mean())


def fat_fraction(water: np.ndarray, fat: np.ndarray) -> np.ndarray:
    """Fat fraction in per mille, 1000 F / (W + F), with the denominator 1 where W + F is 0."""
    water = water.astype(np.float64)
    fat = fat.astype(np.float64)
    total = water + fat
    total[total == 0] = 1.0
    return 1000.0 * fat / total


def encode_fat_fraction(fraction_permille: np.ndarray) -> np.ndarray:
    """Per mille fat fraction to uint8: 0-50 % spans 0-255 (truncated), higher values saturate."""
    return truncate_to_uint8(np.clip(fraction_permille / FAT_FRACTION_FULL_SCALE, 0.0, 1.0) * 255.0)


def body_mask(water: np.ndarray, fat: np.ndarray) -> np.ndarray:
    """W + F (zeros counted as 1) at or above the mean coronal Otsu threshold of the whole volume.

    The published pipeline thresholds the volume before the bed crop, on the same sum it
    divides by for the fat fraction (where 0 became 1).
    """
    total = np.add(water, fat, dtype=np.float32)
    total[total == 0] = 1.0
    return total >= body_threshold(total)


def half_count_index(counts: np.ndarray, half: float | None = None) -> int:
    """First index i whose preceding entries (0..i-1) hold at least `half` (default: half the total).

    The published pipeline counts the mask strictly before the candidate slice, so the
    chosen slice is the one just past the halfway point; 0 when no index qualifies.
    """
    cumulative = np.cumsum(counts, dtype=np.int64)
    if half is None:
        half = (int(cumulative[-1]) if len(cumulative) else 0) / 2
    if half <= 0:
        return 0
    index = int(np.searchsorted(cumulative, half, side="left")) + 1
    return index if index < len(counts) else 0


def slice_positions(mask: np.ndarray) -> tuple[int, int]:
    """(row, column) of the coronal and sagittal fat fraction slices from the body mask.

    The row halves the body voxels along anterior-posterior; the column halves the body
    voxels of the first half of the left-right axis (the patient's right: through the liver).
    """
    per_row = np.count_nonzero(mask, axis=(0, 2))
    per_col = np.count_nonzero(mask, axis=(0, 1))
    right_half = int(per_col[: mask.shape[2] // 2].sum())
    return half_count_index(per_row), half_count_index(per_col, right_half / 2)


def side_by_side(coronal: np.ndarray, sagittal: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return resize_linear_uint8(np.concatenate([coronal, sagittal], axis=1), shape)


def projection_channel(channel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Coronal and sagittal sums of one (bed-cropped) channel, each min-max scaled and truncated, resized."""
    coronal = channel.sum(axis=1, dtype=np.float64)
    sagittal = channel.sum(axis=2, dtype=np.float64)
    return side_by_side(truncate_to_uint8(normalize_minmax(coronal)), truncate_to_uint8(normalize_minmax(sagittal)), shape)


def fat_fraction_channel(water: np.ndarray, fat: np.ndarray, mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Coronal and sagittal fat fraction slices through the body centre (bed-cropped input and mask)."""
    row, col = slice_positions(mask)
    coronal = encode_fat_fraction(fat_fraction(water[:, row, :], fat[:, row, :]))
    sagittal = encode_fat_fraction(fat_fraction(water[:, :, col], fat[:, :, col]))
    return side_by_side(coronal, sagittal, shape)


def project_mask(mask: np.ndarray) -> np.ndarray:
    """Where a boolean volume on the fused grid (bed rows included) shows in the (256, 256) image.

    The geometry of the water and fat channels: bed crop, the coronal view along the rows and
    the sagittal view along the columns (a pixel is in the mask when any voxel behind it is),
    side by side and resized as the image is. For scoring saliency against known anatomy.
    """
    cropped = crop_bed(np.asarray(mask, dtype=bool))
    coronal = cropped.any(axis=1).astype(np.uint8) * 255
    sagittal = cropped.any(axis=2).astype(np.uint8) * 255
    return side_by_side(coronal, sagittal, IMAGE_SHAPE[1:]) >= 128


def build_representation(volume: FusedVolume) -> np.ndarray:
    """The (3, 256, 256) uint8 image: water projections, fat projections, fat fraction slices."""
    if volume.water.shape != volume.fat.shape or volume.water.size == 0:
        raise ProjectionError(f"water {volume.water.shape} and fat {volume.fat.shape} do not form one volume")
    water = crop_bed(volume.water)
    fat = crop_bed(volume.fat)
    mask = crop_bed(body_mask(volume.water, volume.fat))
    shape = IMAGE_SHAPE[1:]
    return np.stack(
        [
            projection_channel(water, shape),
            projection_channel(fat, shape),
            fat_fraction_channel(water, fat, mask, shape),
        ]
    )
