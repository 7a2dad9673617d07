"""Out-of-distribution flag: how far an exam lies from a module's training images.

When a module is built with its training images, it stores a compact description of them in
feature blocks (`FEATURE_KINDS`: network stages, pooled pixels, image statistics): per block the
features standardised and a Ledoit-Wolf shrinkage covariance of them, held through the training
exams' principal axes (exact, N x D numbers). A block's distance is its Mahalanobis distance under
that covariance; with several blocks an exam's distance is the largest block distance, each in
units of its block's spread (90th percentile of its cross-fitted training distances). The module
also stores the training exams' distances, each computed by a description fitted without that
exam (5-fold cross-fitting, so they are distances of unseen in-distribution exams), and a
threshold: the 99th percentile of the distances of held-out in-distribution exams (the training
run's validation exams and any further held-out images), or, with none, of the cross-fitted
training distances.

Prediction reports `ood_score`, the percentage of training exams at or below the exam's distance
(0-100, monotone in the distance), and flags the exam when the distance exceeds the threshold.
Measured rates: docs/ood.md (benchmarks/ood.py).

Fitting and scoring use numpy, scipy and scikit-learn; only `extract_features` runs the network
(torch imported there).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mimir.errors import MimirError

if TYPE_CHECKING:
    import torch

    from mimir.network import MeanVarianceResNet

logger = logging.getLogger(__name__)

OOD_FILE = "ood.safetensors"
OOD_FORMAT = "mimir-ood"
#: The flag's default threshold: this percentile of held-out in-distribution exams' distances.
DEFAULT_PERCENTILE = 99.0
#: None: every principal axis of the training exams (the exact Ledoit-Wolf distance).
DEFAULT_COMPONENTS: int | None = None
CROSS_FIT_FOLDS = 5
#: Side of the average-pooled image the `image` features are made of (3 x 16 x 16 values).
IMAGE_FEATURE_SIDE = 16


@dataclass(frozen=True)
class FeatureKind:
    """Network features (stages of the ResNet, mean and optionally sd over space) or, with
    `image`, statistics of the image itself (`IMAGE_STATISTICS`, no network)."""

    layers: tuple[str, ...] = ()
    with_sd: bool = False
    pool_input: bool = True
    image: bool = False


#: The feature spaces a description can live in. '+' concatenates kinds into one feature space
#: (one distance, e.g. "stages+image"); ',' makes separate blocks, each with its own distance,
#: combined as the largest standardised block distance (e.g. "stages+image,noise,background").
FEATURE_KINDS: dict[str, FeatureKind] = {
    # What the final layer reads: the spatial mean of layer4, on the input the network was trained on.
    "penultimate": FeatureKind(layers=("layer4",)),
    # Spatial mean and sd of layer3 and layer4, on the input the network was trained on.
    "stages": FeatureKind(layers=("layer3", "layer4"), with_sd=True),
    # The same on the full-resolution image, even for a network trained on pooled input.
    "stages_full": FeatureKind(layers=("layer3", "layer4"), with_sd=True, pool_input=False),
    # The image itself, average-pooled to 3 x 16 x 16: needs no network.
    "image": FeatureKind(image=True),
    # Image statistics (no network), see the functions below.
    "intensity": FeatureKind(image=True),
    "noise": FeatureKind(image=True),
    "background": FeatureKind(image=True),
    "contrast": FeatureKind(image=True),
    "profile": FeatureKind(image=True),
}
#: Network stages and image statistics as separate blocks: docs/ood.md measures the choice.
DEFAULT_FEATURES = "stages,image,intensity,noise,background,contrast"
BLOCK_SEPARATOR = ","
PART_SEPARATOR = "+"


class OODError(MimirError, ValueError):
    """An OOD description that cannot be fitted or read (too few exams, unknown features, bad file)."""


def feature_blocks(features: str) -> list[list[str]]:
    """The blocks (',') of a feature name and the kinds ('+') each concatenates; unknown names refused."""
    blocks = [block.split(PART_SEPARATOR) for block in features.split(BLOCK_SEPARATOR)]
    names = [name for block in blocks for name in block]
    unknown = [name for name in names if name not in FEATURE_KINDS]
    if not features or unknown:
        raise OODError(
            f"unknown OOD features {features!r}: combine {', '.join(FEATURE_KINDS)} with "
            f"'{PART_SEPARATOR}' (one feature space) or '{BLOCK_SEPARATOR}' (separate blocks)"
        )
    if len(set(names)) != len(names):
        raise OODError(f"OOD features {features!r} name a kind twice")
    return blocks


def feature_parts(features: str) -> list[FeatureKind]:
    """The kinds a feature name ('penultimate', 'stages+image', 'image,noise') uses, in order."""
    return [FEATURE_KINDS[name] for block in feature_blocks(features) for name in block]


# image statistics -----------------------------------------------------------------------------------
#: A pixel is body where the water and fat projections (channels 0 and 1, each 0-255) add up to
#: more than this; the rest is the background, the projections' noise floor.
BODY_THRESHOLD = 30
INTENSITY_BINS = 16
#: Horizontal bands (head to foot) the `noise` and `profile` features are taken over.
NOISE_BANDS = 8
PROFILE_BANDS = 32
#: Fat-fraction channel values (0-255 for 0-50 %) of lean tissue (muscle, liver) in `noise`.
LEAN_RANGE = (3.0, 80.0)


def _as_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise OODError(f"image statistics need (N, 3, height, width) images, got shape {images.shape}")
    return images


def body_mask(images: np.ndarray) -> np.ndarray:
    """(N, H, W): pixels inside the body, from the water and fat projections."""
    images = _as_images(images)
    return images[:, 0].astype(np.int32) + images[:, 1].astype(np.int32) > BODY_THRESHOLD


def image_features(images: np.ndarray) -> np.ndarray:
    """(N, 3, 256, 256) uint8 images -> (N, 768): each channel average-pooled to 16 x 16, 0-1."""
    images = np.asarray(images)
    n, channels, height, width = images.shape
    side = IMAGE_FEATURE_SIDE
    blocks = images.reshape(n, channels, side, height // side, side, width // side).astype(np.float32)
    return blocks.mean(axis=(3, 5)).reshape(n, -1) / 255.0


def intensity_features(images: np.ndarray) -> np.ndarray:
    """(N, 48): each channel's histogram (16 bins) inside the body, as shares of the body's pixels.

    Tissue contrast and fat fractions shift these (another phantom, another protocol, a water-fat
    swap) while anatomy moves them less than it moves pixels."""
    images = _as_images(images)
    mask = body_mask(images)
    out = np.zeros((len(images), 3, INTENSITY_BINS))
    for index, (image, inside) in enumerate(zip(images, mask, strict=True)):
        pixels = max(int(inside.sum()), 1)
        for channel in range(3):
            bins = image[channel][inside].astype(np.int64) * INTENSITY_BINS // 256
            out[index, channel] = np.bincount(bins, minlength=INTENSITY_BINS)[:INTENSITY_BINS] / pixels
    return out.reshape(len(images), -1)


def _high_frequency(images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W): absolute difference of each channel from its 3 x 3 box-blurred copy."""
    from scipy import ndimage

    values = images.astype(np.float32)
    return np.abs(values - ndimage.uniform_filter(values, size=(1, 1, 3, 3), mode="nearest"))


def noise_features(images: np.ndarray) -> np.ndarray:
    """(N, 25): high-frequency energy, and the fat-fraction noise of lean tissue.

    Per channel and per horizontal band (8, head to foot): the mean absolute difference from a
    3 x 3 blurred copy (noise, sharpness and edges: a noisier or blurrier protocol, slices of
    another thickness, and where edges lie from head to foot); and the same difference over the
    fat-fraction channel's lean tissue (muscle, liver: values 3-80), whose noise is the
    protocol's noise over the lean tissues' signal."""
    images = _as_images(images)
    n, _, height, width = images.shape
    detail = _high_frequency(images)
    bands = detail.reshape(n, 3, NOISE_BANDS, height // NOISE_BANDS, width).mean(axis=(3, 4)).reshape(n, -1)
    from scipy import ndimage

    fat_fraction = images[:, 2].astype(np.float32)
    smooth = ndimage.uniform_filter(fat_fraction, size=(1, 3, 3), mode="nearest")
    lean = body_mask(images) & (smooth > LEAN_RANGE[0]) & (smooth < LEAN_RANGE[1])
    lean_noise = np.array([
        float(detail[index, 2][lean[index]].mean()) if lean[index].any() else 0.0 for index in range(n)
    ])
    return np.concatenate([bands, lean_noise[:, None]], axis=1)


def background_features(images: np.ndarray) -> np.ndarray:
    """(N, 4): log of each channel's mean outside the body, and the body's share of the image.

    Each projection is scaled to its own maximum, so its noise floor measures the protocol's
    noise against that channel's brightest tissue: fat against water changes with the tissues'
    signals (another phantom), both with the noise (another protocol)."""
    images = _as_images(images)
    mask = body_mask(images)
    out = np.zeros((len(images), 4))
    for index, (image, inside) in enumerate(zip(images, mask, strict=True)):
        outside = ~inside
        for channel in range(3):
            level = float(image[channel][outside].mean()) if outside.any() else 0.0
            out[index, channel] = np.log(level + 0.5)
        out[index, 3] = float(inside.mean())
    return out


def contrast_features(images: np.ndarray) -> np.ndarray:
    """(N, 1): log of the fat projection's noise floor over the water projection's.

    Each projection is scaled to its own brightest pixel, so the ratio of the two noise floors
    is the ratio of the brightest water signal (liver, muscle) to the brightest fat signal
    (adipose tissue): the tissues' relative brightness, which another phantom, coil or sequence
    changes and anatomy changes little. One number, so that a shift along it is not diluted
    among other statistics."""
    floors = background_features(images)
    return (floors[:, 1] - floors[:, 0])[:, None]


def profile_features(images: np.ndarray) -> np.ndarray:
    """(N, 99): head-to-foot profiles: each channel's mean per horizontal band (32 bands, 0-1),
    and the body's share of the pixels in the top, middle and bottom thirds. A scan flipped head
    to foot reverses them, which spatial means of network features do not see."""
    images = _as_images(images)
    n, _, height, width = images.shape
    means = images.astype(np.float32).reshape(n, 3, PROFILE_BANDS, height // PROFILE_BANDS, width).mean(axis=(3, 4))
    mask = body_mask(images).astype(np.float32)
    third = height // 3
    widths = np.stack([mask[:, part * third:(part + 1) * third].mean(axis=(1, 2)) for part in range(3)], axis=1)
    return np.concatenate([means.reshape(n, -1) / 255.0, widths], axis=1)


#: The image statistics kinds (FEATURE_KINDS with image=True) and how each is computed.
IMAGE_STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "image": image_features,
    "intensity": intensity_features,
    "noise": noise_features,
    "background": background_features,
    "contrast": contrast_features,
    "profile": profile_features,
}


def extract_features(network: MeanVarianceResNet | torch.nn.Module, images: torch.Tensor, features: str) -> np.ndarray:
    """(N, D) float64 features of a float32 network input (0-255, as `images_to_input` makes it):
    every kind `features` names, concatenated in order (blocks too: the description splits them).

    Runs in float32 without autocast whatever precision the predictions use, so a description
    and the exams scored against it share their arithmetic.
    """
    import torch

    parts = []
    with torch.inference_mode(), torch.autocast(device_type=images.device.type, enabled=False):
        pixels = None
        for name in (name for block in feature_blocks(features) for name in block):
            kind = FEATURE_KINDS[name]
            if kind.image:
                if pixels is None:
                    pixels = images.to(torch.uint8).cpu().numpy()
                parts.append(IMAGE_STATISTICS[name](pixels).astype(np.float64))
            else:
                values = network.features(images.float(), kind.layers, with_sd=kind.with_sd, pool_input=kind.pool_input)
                parts.append(values.float().cpu().numpy())
    return np.concatenate(parts, axis=1).astype(np.float64)


# the description ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Reduction:
    """Standardisation, PCA axes and shrinkage covariance: distances of features to a set of exams."""

    feature_mean: np.ndarray
    feature_scale: np.ndarray
    components: np.ndarray  # (k, D) PCA axes of the standardised features
    location: np.ndarray  # (k,)
    precision: np.ndarray  # (k, k) inverse of the Ledoit-Wolf covariance of the PCA scores
    residual_rms: float  # root mean square PCA residual of the fitted exams

    def distances(self, features: np.ndarray) -> np.ndarray:
        standardised = (np.asarray(features, dtype=np.float64) - self.feature_mean) / self.feature_scale
        scores = standardised @ self.components.T
        centred = scores - self.location
        mahalanobis = np.einsum("ij,jk,ik->i", centred, self.precision, centred)
        residual = standardised - scores @ self.components
        residual_term = np.sum(residual**2, axis=1) / self.residual_rms**2
        return np.sqrt(np.maximum(mahalanobis, 0.0) + residual_term)


def ledoit_wolf_shrinkage(values: np.ndarray) -> tuple[float, float]:
    """scikit-learn's Ledoit-Wolf shrinkage (and the mean eigenvalue it shrinks towards) from the
    N x N Gram matrix: the same number as `sklearn.covariance.ledoit_wolf_shrinkage`, without its
    D x D work (seconds instead of minutes for thousands of features)."""
    centred = values - values.mean(axis=0)
    n, dimension = centred.shape
    gram = centred @ centred.T
    frobenius_sq = float(np.sum(gram**2))
    eigen_mean = float(np.trace(gram)) / (n * dimension)
    delta = frobenius_sq / n**2 / dimension - eigen_mean**2
    beta = (float(np.sum(np.diag(gram) ** 2)) - frobenius_sq / n) / (n**2 * dimension)
    shrinkage = 0.0 if delta <= 0 else min(beta, delta) / delta
    return shrinkage, eigen_mean


def _fit_reduction(features: np.ndarray, n_components: int | None = None) -> _Reduction:
    """Ledoit-Wolf shrinkage covariance of the standardised features, held compactly.

    The shrunk covariance (1 - a) S + a m I (S the sample covariance, m its mean eigenvalue)
    is written through the principal axes of the training exams (at most N - 1 of them):
    on those axes its inverse is 1 / ((1 - a) l + a m) per eigenvalue l, and off them 1 / (a m),
    which the residual term carries. So the Mahalanobis distance is exact while the file holds
    N x D numbers, not D x D. `n_components` keeps only that many axes (the rest is residual).
    """
    from sklearn.decomposition import PCA

    features = np.asarray(features, dtype=np.float64)
    n, dimension = features.shape
    mean = features.mean(axis=0)
    sd = features.std(axis=0)
    # Features whose training sd is below the median get the median: a background pixel or a
    # channel that never fires would otherwise weigh a thousand times more than the rest.
    scale = np.maximum(sd, float(np.median(sd)) if np.any(sd > 0) else 1.0)
    standardised = (features - mean) / scale
    shrinkage, eigen_mean = ledoit_wolf_shrinkage(standardised)
    k = min(n - 1, dimension) if n_components is None else max(1, min(n_components, n - 1, dimension))
    pca = PCA(n_components=k, svd_solver="full").fit(standardised)
    eigenvalues = pca.explained_variance_ * (n - 1) / n  # the 1/N covariance Ledoit-Wolf shrinks
    off_axis = max(shrinkage * eigen_mean, 1e-12)
    precision = np.diag(1.0 / ((1.0 - shrinkage) * eigenvalues + off_axis))
    # C order, as a stored description loads: the same BLAS path, so a module scores an exam to
    # the same bit before and after it is saved
    return _Reduction(
        feature_mean=mean, feature_scale=scale, components=np.ascontiguousarray(pca.components_), location=np.zeros(k),
        precision=precision, residual_rms=float(np.sqrt(off_axis)),
    )


#: A block's distances are divided by this percentile of its cross-fitted training distances
#: before blocks are combined, so that every block speaks in units of its own spread.
BLOCK_UNIT_PERCENTILE = 90.0


@dataclass(frozen=True)
class OODDescription:
    """A module's training images in feature space, their distances, and the flag's threshold.

    One block (`features` without ','): the distance is the Mahalanobis distance of the
    concatenated features, as modules have always had it. Several blocks: each block has its
    own description; an exam's distance is the largest of its block distances, each divided by
    that block's `units` (the 90th percentile of the block's cross-fitted training distances).
    """

    features: str
    reductions: tuple[_Reduction, ...]
    #: Sorted distances of the training exams, each from a description fitted without it.
    reference: np.ndarray
    threshold: float
    threshold_source: str  # "held-out" or "cross-fitted training"
    percentile: float = DEFAULT_PERCENTILE
    n_train: int = 0
    n_held_out: int = 0
    #: Per block, the distance that counts as one unit (empty for one block: no scaling).
    units: tuple[float, ...] = ()

    @property
    def reduction(self) -> _Reduction:
        """The single block's reduction (descriptions with one block)."""
        return self.reductions[0]

    @property
    def block_sizes(self) -> list[int]:
        return [int(reduction.components.shape[1]) for reduction in self.reductions]

    def block_distances(self, features: np.ndarray) -> list[np.ndarray]:
        """Each block's Mahalanobis distance of (N, D) features (the blocks' columns in order)."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != sum(self.block_sizes):
            raise OODError(f"{self.features}: expected {sum(self.block_sizes)} features per exam, got shape {features.shape}")
        edges = np.cumsum([0, *self.block_sizes])
        return [
            reduction.distances(features[:, start:stop])
            for reduction, start, stop in zip(self.reductions, edges[:-1], edges[1:], strict=True)
        ]

    def distances(self, features: np.ndarray) -> np.ndarray:
        blocks = self.block_distances(features)
        if len(blocks) == 1:
            return blocks[0]
        return np.max([distance / unit for distance, unit in zip(blocks, self.units, strict=True)], axis=0)

    def score(self, distances: np.ndarray) -> np.ndarray:
        """Percentage of training exams at or below each distance (NaN stays NaN)."""
        distances = np.asarray(distances, dtype=np.float64)
        ranks = np.searchsorted(self.reference, np.nan_to_num(distances, nan=0.0), side="right")
        scores = 100.0 * ranks / len(self.reference)
        return np.where(np.isnan(distances), np.nan, scores)

    def flagged(self, distances: np.ndarray) -> np.ndarray:
        """True where an exam lies farther than the threshold (NaN: not flagged)."""
        with np.errstate(invalid="ignore"):
            return np.asarray(distances, dtype=np.float64) > self.threshold

    @property
    def threshold_score(self) -> float:
        return float(self.score(np.array([self.threshold]))[0])

    # files ---------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """What module.json records of the description (the arrays go into OOD_FILE)."""
        summary: dict[str, Any] = {
            "features": self.features,
            "n_components": int(sum(reduction.components.shape[0] for reduction in self.reductions)),
            "n_features": int(sum(self.block_sizes)),
            "n_train": self.n_train,
            "n_held_out": self.n_held_out,
            "percentile": self.percentile,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
        }
        if len(self.reductions) == 1:
            summary["residual_rms"] = self.reduction.residual_rms
        else:
            summary["blocks"] = [
                {
                    "features": name, "n_components": int(reduction.components.shape[0]),
                    "n_features": int(reduction.components.shape[1]), "residual_rms": reduction.residual_rms,
                    "unit": unit,
                }
                for name, reduction, unit in zip(self.features.split(BLOCK_SEPARATOR), self.reductions, self.units, strict=True)
            ]
        return summary

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        arrays: dict[str, np.ndarray] = {"reference": self.reference}
        for index, reduction in enumerate(self.reductions):
            # one block: the keys modules have always had; several: one prefix per block
            prefix = "" if len(self.reductions) == 1 else f"block{index}."
            arrays.update({
                f"{prefix}feature_mean": reduction.feature_mean, f"{prefix}feature_scale": reduction.feature_scale,
                f"{prefix}components": reduction.components, f"{prefix}location": reduction.location,
                f"{prefix}precision": reduction.precision,
            })
        if len(self.reductions) > 1:
            arrays["block_units"] = np.asarray(self.units, dtype=np.float64)
        return save({key: np.ascontiguousarray(value, dtype=np.float64) for key, value in arrays.items()}, metadata={"format": OOD_FORMAT})

    @classmethod
    def from_parts(cls, summary: dict[str, Any], data: bytes, source: str = OOD_FILE) -> OODDescription:
        from safetensors import SafetensorError
        from safetensors.numpy import load

        try:
            arrays = load(data)
            features = str(summary["features"])
            blocks = feature_blocks(features)
            if len(blocks) == 1:
                prefixes, residuals, units = [""], [float(summary["residual_rms"])], ()
            else:
                recorded = summary["blocks"]
                if len(recorded) != len(blocks):
                    raise ValueError(f"{len(recorded)} blocks recorded for {len(blocks)} feature blocks")
                prefixes = [f"block{index}." for index in range(len(blocks))]
                residuals = [float(block["residual_rms"]) for block in recorded]
                units = tuple(float(unit) for unit in arrays["block_units"])
            reductions = tuple(
                _Reduction(
                    feature_mean=arrays[f"{prefix}feature_mean"], feature_scale=arrays[f"{prefix}feature_scale"],
                    components=arrays[f"{prefix}components"], location=arrays[f"{prefix}location"],
                    precision=arrays[f"{prefix}precision"], residual_rms=residual,
                )
                for prefix, residual in zip(prefixes, residuals, strict=True)
            )
            description = cls(
                features=features, reductions=reductions, reference=arrays["reference"],
                threshold=float(summary["threshold"]), threshold_source=str(summary["threshold_source"]),
                percentile=float(summary["percentile"]), n_train=int(summary["n_train"]),
                n_held_out=int(summary["n_held_out"]), units=units,
            )
        except (SafetensorError, KeyError, TypeError, ValueError) as error:
            raise OODError(f"{source}: not a readable OOD description: {error}") from error
        _check_shapes(description, source)
        return description


def _check_shapes(description: OODDescription, source: str) -> None:
    for reduction in description.reductions:
        k, d = reduction.components.shape
        expected = {"feature_mean": (d,), "feature_scale": (d,), "location": (k,), "precision": (k, k)}
        for name, shape in expected.items():
            if getattr(reduction, name).shape != shape:
                raise OODError(f"{source}: {name} has shape {getattr(reduction, name).shape}, expected {shape}")
    if len(description.reductions) > 1 and (
        len(description.units) != len(description.reductions) or not all(unit > 0 for unit in description.units)
    ):
        raise OODError(f"{source}: the blocks' units are missing or not positive")
    if description.reference.ndim != 1 or description.reference.size == 0:
        raise OODError(f"{source}: the training distances are missing")


def _cross_fitted(features: np.ndarray, n_components: int | None, folds: int, seed: int) -> np.ndarray:
    """Each exam's distance from a description fitted on the other folds."""
    from sklearn.model_selection import KFold

    distances = np.empty(features.shape[0])
    for fitted, scored in KFold(folds, shuffle=True, random_state=seed).split(features):
        distances[scored] = _fit_reduction(features[fitted], n_components).distances(features[scored])
    return distances


def fit_description(
    train_features: np.ndarray,
    held_out_features: np.ndarray | None,
    features: str,
    *,
    block_sizes: Sequence[int] | None = None,
    n_components: int | None = DEFAULT_COMPONENTS,
    percentile: float = DEFAULT_PERCENTILE,
    folds: int = CROSS_FIT_FOLDS,
    seed: int = 0,
) -> OODDescription:
    """The description of `train_features` (N, D) and the flag's threshold.

    With several blocks (',' in `features`), `block_sizes` says how many of the D columns
    each block has (in order). The threshold is the `percentile` of the held-out exams'
    distances; without held-out exams, of the cross-fitted training distances (each training
    exam scored by a description fitted on the other folds).
    """
    train_features = np.asarray(train_features, dtype=np.float64)
    n = train_features.shape[0]
    if n < 2 * folds or not np.all(np.isfinite(train_features)):
        raise OODError(f"an OOD description needs at least {2 * folds} training exams with finite features, got {n}")
    blocks = feature_blocks(features)
    sizes = [train_features.shape[1]] if len(blocks) == 1 else list(block_sizes or [])
    if len(sizes) != len(blocks) or sum(sizes) != train_features.shape[1] or min(sizes) < 1:
        raise OODError(f"{features}: block sizes {sizes} do not split {train_features.shape[1]} features into {len(blocks)} blocks")
    edges = np.cumsum([0, *sizes])
    columns = [train_features[:, start:stop] for start, stop in zip(edges[:-1], edges[1:], strict=True)]
    reductions = tuple(_fit_reduction(values, n_components) for values in columns)
    cross_fitted = [_cross_fitted(values, n_components, folds, seed) for values in columns]
    if len(blocks) == 1:
        units: tuple[float, ...] = ()
        reference = cross_fitted[0]
    else:
        units = tuple(float(np.percentile(distances, BLOCK_UNIT_PERCENTILE)) for distances in cross_fitted)
        reference = np.max([distances / unit for distances, unit in zip(cross_fitted, units, strict=True)], axis=0)
    description = OODDescription(
        features=features, reductions=reductions, reference=np.sort(reference), threshold=np.nan,
        threshold_source="", percentile=percentile, n_train=n, units=units,
    )
    if held_out_features is not None and len(held_out_features):
        held = description.distances(held_out_features)
        threshold, source, n_held = float(np.percentile(held, percentile)), "held-out", len(held)
    else:
        threshold, source, n_held = float(np.percentile(reference, percentile)), "cross-fitted training", 0
    logger.info(
        "OOD description: %s features (%s) -> %d components; threshold %.3g (%s, %g th percentile)",
        features, "+".join(str(size) for size in sizes), sum(r.components.shape[0] for r in reductions),
        threshold, source, percentile,
    )
    return dataclasses.replace(description, threshold=threshold, threshold_source=source, n_held_out=n_held)


def batched_features(
    network: MeanVarianceResNet, batches: Iterable[np.ndarray], features: str, device: str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Features of (n, 3, 256, 256) uint8 image batches through `network` (in eval mode on `device`)."""
    import torch

    from mimir.network import images_to_input

    network.eval()
    parts, done = [], 0
    for batch in batches:
        parts.append(extract_features(network, images_to_input(torch.as_tensor(batch).to(device)), features))
        done += len(batch)
        if progress is not None:
            progress(done)
    if not parts:
        return np.zeros((0, 0))
    return np.concatenate(parts)


def describe_summary(summary: dict[str, Any]) -> str:
    """One line for `mimir module info`."""
    blocks = summary.get("blocks")
    shape = f" in {len(blocks)} blocks" if isinstance(blocks, list) else ""
    return (
        f"{summary.get('features')} features{shape} -> {summary.get('n_components')} components, "
        f"{summary.get('n_train')} training exams; flag above distance {float(summary.get('threshold', float('nan'))):.3g} "
        f"({summary.get('percentile')} th percentile of {summary.get('n_held_out') or ''} "
        f"{summary.get('threshold_source')} exams)"
    )


def block_sizes_of(network: MeanVarianceResNet | torch.nn.Module, features: str, image_shape: tuple[int, ...] = (3, 256, 256)) -> list[int]:
    """How many features each block of `features` has for this network (one blank image through it)."""
    import torch

    parameter = next(iter(network.parameters()), None)
    blank = torch.zeros((1, *image_shape), device=parameter.device if parameter is not None else "cpu")
    return [extract_features(network, blank, PART_SEPARATOR.join(block)).shape[1] for block in feature_blocks(features)]


def describe_cache(
    network: MeanVarianceResNet,
    cache_exams: list[tuple[str, Any]],
    held_out: set[str],
    features: str = DEFAULT_FEATURES,
    *,
    batch_size: int = 16,
    n_components: int | None = DEFAULT_COMPONENTS,
    percentile: float = DEFAULT_PERCENTILE,
    held_out_exams: list[tuple[str, Any]] | None = None,
) -> OODDescription:
    """The description of cached images (stem, path): `held_out` stems set the threshold, the
    others are the training exams; `held_out_exams` (stem, path), images of the same population
    that no network trained on, join the held-out exams. Images that cannot be loaded are left
    out (and logged)."""
    from mimir.inference.batching import CachedExam, iter_batches

    def features_of(exams: list[tuple[str, Any]]) -> dict[str, np.ndarray]:
        collected: dict[str, np.ndarray] = {}
        for batch in iter_batches([CachedExam(stem, path) for stem, path in exams], batch_size):
            for stem, reason in batch.failures.items():
                logger.warning("OOD description: %s left out: %s", stem, reason)
            if batch.stems:
                values = batched_features(network, [batch.images.numpy()], features)
                collected.update(zip(batch.stems, values, strict=True))
        return collected

    collected = features_of(cache_exams)
    train = [collected[stem] for stem in collected if stem not in held_out]
    held = [collected[stem] for stem in collected if stem in held_out]
    if held_out_exams:
        held += list(features_of(held_out_exams).values())
    if not train:
        raise OODError("no training image could be loaded for the OOD description")
    logger.info("OOD description from %d training and %d held-out images", len(train), len(held))
    return fit_description(
        np.stack(train), np.stack(held) if held else None, features, n_components=n_components, percentile=percentile,
        block_sizes=block_sizes_of(network, features) if BLOCK_SEPARATOR in features else None,
    )
