"""The fused volume to the (3, 256, 256) uint8 image the published networks expect (shared doc, section 3).

Orientation (array conventions: slices head to foot, rows anterior to posterior, columns
patient right to left): every view has the head at the top. The coronal view keeps the
column order, so the patient's right is on the image's left (radiological convention, as
if facing the patient). The sagittal view keeps the row order, so anterior is on the left
and the patient faces left. Coronal views sit on the left half, sagittal views on the right.

Resizing is bilinear with half-pixel centres and no antialiasing (the semantics of OpenCV's
INTER_LINEAR): output pixel i samples the input at (i + 0.5) * in / out - 0.5, clamped to
the edge pixels. Values are rounded to the nearest integer (halves to even) once, at the end.
"""

from __future__ import annotations

import numpy as np

from mimir.imaging.fusion import FusedVolume
from mimir.protocol import BED_ROWS, IMAGE_SHAPE

#: Histogram bins of the Otsu threshold (as common implementations default to).
OTSU_BINS = 256
#: Fat fraction (per mille) that maps to 255 in channel 2: the channel covers 0-50 %.
FAT_FRACTION_FULL_SCALE = 500.0
#: Voxels quantised at a time while building Otsu histograms (keeps temporaries in cache).
_OTSU_CHUNK_VOXELS = 1 << 20


class ProjectionError(ValueError):
    """A volume that cannot give the 2D representation."""


def crop_bed(array: np.ndarray, bed_rows: int = BED_ROWS) -> np.ndarray:
    """Drop the most posterior rows (the scanner bed); a view, no copy."""
    if array.shape[1] <= bed_rows:
        raise ProjectionError(f"{array.shape[1]} rows leave nothing after cropping {bed_rows} bed rows")
    return array[:, : array.shape[1] - bed_rows, :]


def interpolation_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) matrix of bilinear weights with half-pixel centres, edges clamped."""
    position = (np.arange(size_out, dtype=np.float64) + 0.5) * (size_in / size_out) - 0.5
    position = np.clip(position, 0, size_in - 1)
    lower = np.minimum(np.floor(position).astype(np.intp), size_in - 1)
    upper = np.minimum(lower + 1, size_in - 1)
    fraction = position - lower
    matrix = np.zeros((size_out, size_in), dtype=np.float64)
    outputs = np.arange(size_out)
    np.add.at(matrix, (outputs, lower), 1 - fraction)
    np.add.at(matrix, (outputs, upper), fraction)
    return matrix


def resize_bilinear(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a 2D image to `shape` (rows, cols); see the module docstring for the semantics."""
    rows = interpolation_matrix(image.shape[0], shape[0])
    cols = interpolation_matrix(image.shape[1], shape[1])
    return rows @ image.astype(np.float64) @ cols.T


def normalize_minmax(view: np.ndarray) -> np.ndarray:
    """Scale a view to 0-255 by its own minimum and maximum (a constant view becomes 0)."""
    view = view.astype(np.float64)
    low, high = float(view.min()), float(view.max())
    if high <= low:
        return np.zeros_like(view)
    return (view - low) * (255.0 / (high - low))


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def otsu_thresholds(samples: np.ndarray, axis: int = 0, bins: int = OTSU_BINS) -> np.ndarray:
    """Otsu's threshold of every slice of `samples` along `axis`, all slices at once.

    Values above the threshold are foreground; the threshold is the centre of the last bin
    of the background class. A constant slice gets its value. The array is read in its own
    layout (no transposed copy), which matters on a 14-million-voxel volume.
    """
    samples = np.asarray(samples, dtype=np.float32)
    others = tuple(other for other in range(samples.ndim) if other != axis)
    count = samples.shape[axis]
    width = samples.size // count
    low = samples.min(axis=others)
    high = samples.max(axis=others)
    span = np.where(high > low, high - low, 1).astype(np.float32)
    along = [1] * samples.ndim
    along[axis] = count
    offset = low.reshape(along)
    scale = (bins / span).reshape(along)
    bin_base = (np.arange(count, dtype=np.intp) * bins).reshape(along)
    histogram = np.zeros(count * bins, dtype=np.int64)
    chunk_axis = others[0]
    step = max(1, _OTSU_CHUNK_VOXELS // max(1, samples.size // samples.shape[chunk_axis]))
    for start in range(0, samples.shape[chunk_axis], step):
        chunk = samples[(slice(None),) * chunk_axis + (slice(start, start + step),)]
        quantised = ((chunk - offset) * scale).astype(np.intp)
        np.minimum(quantised, bins - 1, out=quantised)
        quantised += bin_base
        histogram += np.bincount(quantised.ravel(), minlength=count * bins)
    histogram = histogram.reshape(count, bins).astype(np.float64)
    centres = low[:, None] + (np.arange(bins) + 0.5)[None, :] * (span / bins)[:, None]
    background = np.cumsum(histogram, axis=1)
    foreground = width - background
    background_sum = np.cumsum(histogram * centres, axis=1)
    total_sum = background_sum[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        background_mean = background_sum / background
        foreground_mean = (total_sum - background_sum) / foreground
        between = background * foreground * (background_mean - foreground_mean) ** 2
    between = np.nan_to_num(between, nan=-1.0)
    best = np.argmax(between, axis=1)
    thresholds = centres[np.arange(count), best]
    return np.where(high > low, thresholds, low).astype(np.float64)


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
    """Per mille fat fraction to 0-255 (float): 0-50 % spans the range, higher values saturate."""
    return np.clip(fraction_permille / FAT_FRACTION_FULL_SCALE, 0.0, 1.0) * 255.0


def half_count_index(counts: np.ndarray) -> int:
    """First index where the cumulative count reaches half the total (the middle if empty)."""
    cumulative = np.cumsum(counts, dtype=np.int64)
    total = int(cumulative[-1]) if len(cumulative) else 0
    if total == 0:
        return len(counts) // 2
    return int(np.searchsorted(cumulative, total / 2, side="left"))


def slice_positions(mask: np.ndarray) -> tuple[int, int]:
    """(row, column) of the coronal and sagittal fat fraction slices from the body mask.

    The row halves the body voxels along anterior-posterior; the column halves the body
    voxels of the first half of the left-right axis (the patient's right: through the liver).
    """
    per_row = np.count_nonzero(mask, axis=(0, 2))
    per_col = np.count_nonzero(mask, axis=(0, 1))
    return half_count_index(per_row), half_count_index(per_col[: mask.shape[2] // 2])


def side_by_side(coronal: np.ndarray, sagittal: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return resize_bilinear(np.concatenate([coronal, sagittal], axis=1), shape)


def projection_channel(channel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Coronal and sagittal sums of one (bed-cropped) channel, each min-max scaled, resized."""
    coronal = channel.sum(axis=1, dtype=np.float32)
    sagittal = channel.sum(axis=2, dtype=np.float32)
    return side_by_side(normalize_minmax(coronal), normalize_minmax(sagittal), shape)


def fat_fraction_channel(water: np.ndarray, fat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Coronal and sagittal fat fraction slices through the body centre (bed-cropped input)."""
    total = water + fat
    mask = total > body_threshold(total)
    row, col = slice_positions(mask)
    coronal = encode_fat_fraction(fat_fraction(water[:, row, :], fat[:, row, :]))
    sagittal = encode_fat_fraction(fat_fraction(water[:, :, col], fat[:, :, col]))
    return side_by_side(coronal, sagittal, shape)


def build_representation(volume: FusedVolume) -> np.ndarray:
    """The (3, 256, 256) uint8 image: water projections, fat projections, fat fraction slices."""
    water = crop_bed(volume.water)
    fat = crop_bed(volume.fat)
    if water.shape != fat.shape or water.size == 0:
        raise ProjectionError(f"water {volume.water.shape} and fat {volume.fat.shape} do not form one volume")
    shape = IMAGE_SHAPE[1:]
    channels = (
        projection_channel(water, shape),
        projection_channel(fat, shape),
        fat_fraction_channel(water, fat, shape),
    )
    return np.stack([to_uint8(channel) for channel in channels])
