"""Out-of-distribution flag: how far an exam lies from a module's training images.

When a module is built with its training images, it stores a compact description of them in a
feature space (`FEATURE_KINDS`): the features standardised and a Ledoit-Wolf shrinkage
covariance of them, held through the training exams' principal axes (exact, N x D numbers). An
exam's distance is its Mahalanobis distance under that covariance. The module also stores the
training exams' distances, each computed by a description fitted without that exam (5-fold
cross-fitting, so they are distances of unseen in-distribution exams), and a threshold: the 99th
percentile of the distances of held-out in-distribution exams (the training run's validation
exams), or, with none, of the cross-fitted training distances.

Prediction reports `ood_score`, the percentage of training exams at or below the exam's distance
(0-100, monotone in the distance), and flags the exam when the distance exceeds the threshold.
Measured rates: docs/ood.md (benchmarks/ood.py).

Fitting and scoring use numpy and scikit-learn; only `extract_features` runs the network (torch
imported there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
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
    """Network features (stages of the ResNet, mean and optionally sd over space) or image pixels."""

    layers: tuple[str, ...] = ()
    with_sd: bool = False
    pool_input: bool = True
    image: bool = False


#: The feature spaces a description can live in; combine them with '+' (e.g. "penultimate+image").
FEATURE_KINDS: dict[str, FeatureKind] = {
    # What the final layer reads: the spatial mean of layer4, on the input the network was trained on.
    "penultimate": FeatureKind(layers=("layer4",)),
    # Spatial mean and sd of layer3 and layer4, on the input the network was trained on.
    "stages": FeatureKind(layers=("layer3", "layer4"), with_sd=True),
    # The same on the full-resolution image, even for a network trained on pooled input.
    "stages_full": FeatureKind(layers=("layer3", "layer4"), with_sd=True, pool_input=False),
    # The image itself, average-pooled to 3 x 16 x 16: needs no network.
    "image": FeatureKind(image=True),
}
DEFAULT_FEATURES = "stages+image"


class OODError(MimirError, ValueError):
    """An OOD description that cannot be fitted or read (too few exams, unknown features, bad file)."""


def feature_parts(features: str) -> list[FeatureKind]:
    """The kinds a feature name ('penultimate', 'stages+image', ...) combines; unknown names refused."""
    names = features.split("+")
    unknown = [name for name in names if name not in FEATURE_KINDS]
    if not features or unknown:
        raise OODError(f"unknown OOD features {features!r}: combine {', '.join(FEATURE_KINDS)} with '+'")
    return [FEATURE_KINDS[name] for name in names]


def image_features(images: np.ndarray) -> np.ndarray:
    """(N, 3, 256, 256) uint8 images -> (N, 768): each channel average-pooled to 16 x 16, 0-1."""
    images = np.asarray(images)
    n, channels, height, width = images.shape
    side = IMAGE_FEATURE_SIDE
    blocks = images.reshape(n, channels, side, height // side, side, width // side).astype(np.float32)
    return blocks.mean(axis=(3, 5)).reshape(n, -1) / 255.0


def extract_features(network: MeanVarianceResNet | torch.nn.Module, images: torch.Tensor, features: str) -> np.ndarray:
    """(N, D) float64 features of a float32 network input (0-255, as `images_to_input` makes it).

    Runs in float32 without autocast whatever precision the predictions use, so a description
    and the exams scored against it share their arithmetic.
    """
    import torch

    parts = []
    with torch.inference_mode(), torch.autocast(device_type=images.device.type, enabled=False):
        for kind in feature_parts(features):
            if kind.image:
                parts.append(image_features(images.to(torch.uint8).cpu().numpy()))
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
    return _Reduction(
        feature_mean=mean, feature_scale=scale, components=pca.components_, location=np.zeros(k),
        precision=precision, residual_rms=float(np.sqrt(off_axis)),
    )


@dataclass(frozen=True)
class OODDescription:
    """A module's training images in feature space, their distances, and the flag's threshold."""

    features: str
    reduction: _Reduction
    #: Sorted distances of the training exams, each from a description fitted without it.
    reference: np.ndarray
    threshold: float
    threshold_source: str  # "held-out" or "cross-fitted training"
    percentile: float = DEFAULT_PERCENTILE
    n_train: int = 0
    n_held_out: int = 0

    def distances(self, features: np.ndarray) -> np.ndarray:
        return self.reduction.distances(features)

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
        return {
            "features": self.features,
            "n_components": int(self.reduction.components.shape[0]),
            "n_features": int(self.reduction.components.shape[1]),
            "n_train": self.n_train,
            "n_held_out": self.n_held_out,
            "percentile": self.percentile,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "residual_rms": self.reduction.residual_rms,
        }

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        reduction = self.reduction
        arrays = {
            "feature_mean": reduction.feature_mean, "feature_scale": reduction.feature_scale,
            "components": reduction.components, "location": reduction.location,
            "precision": reduction.precision, "reference": self.reference,
        }
        return save({key: np.ascontiguousarray(value, dtype=np.float64) for key, value in arrays.items()}, metadata={"format": OOD_FORMAT})

    @classmethod
    def from_parts(cls, summary: dict[str, Any], data: bytes, source: str = OOD_FILE) -> OODDescription:
        from safetensors import SafetensorError
        from safetensors.numpy import load

        try:
            arrays = load(data)
            features = str(summary["features"])
            feature_parts(features)
            reduction = _Reduction(
                feature_mean=arrays["feature_mean"], feature_scale=arrays["feature_scale"],
                components=arrays["components"], location=arrays["location"], precision=arrays["precision"],
                residual_rms=float(summary["residual_rms"]),
            )
            description = cls(
                features=features, reduction=reduction, reference=arrays["reference"],
                threshold=float(summary["threshold"]), threshold_source=str(summary["threshold_source"]),
                percentile=float(summary["percentile"]), n_train=int(summary["n_train"]),
                n_held_out=int(summary["n_held_out"]),
            )
        except (SafetensorError, KeyError, TypeError, ValueError) as error:
            raise OODError(f"{source}: not a readable OOD description: {error}") from error
        _check_shapes(description, source)
        return description


def _check_shapes(description: OODDescription, source: str) -> None:
    reduction = description.reduction
    k, d = reduction.components.shape
    expected = {"feature_mean": (d,), "feature_scale": (d,), "location": (k,), "precision": (k, k)}
    for name, shape in expected.items():
        if getattr(reduction, name).shape != shape:
            raise OODError(f"{source}: {name} has shape {getattr(reduction, name).shape}, expected {shape}")
    if description.reference.ndim != 1 or description.reference.size == 0:
        raise OODError(f"{source}: the training distances are missing")


def fit_description(
    train_features: np.ndarray,
    held_out_features: np.ndarray | None,
    features: str,
    *,
    n_components: int | None = DEFAULT_COMPONENTS,
    percentile: float = DEFAULT_PERCENTILE,
    folds: int = CROSS_FIT_FOLDS,
    seed: int = 0,
) -> OODDescription:
    """The description of `train_features` (N, D) and the flag's threshold.

    The threshold is the `percentile` of the held-out exams' distances; without held-out exams,
    of the cross-fitted training distances (each training exam scored by a description fitted on
    the other folds).
    """
    from sklearn.model_selection import KFold

    train_features = np.asarray(train_features, dtype=np.float64)
    n = train_features.shape[0]
    if n < 2 * folds or not np.all(np.isfinite(train_features)):
        raise OODError(f"an OOD description needs at least {2 * folds} training exams with finite features, got {n}")
    reduction = _fit_reduction(train_features, n_components)
    reference = np.empty(n)
    for fitted, scored in KFold(folds, shuffle=True, random_state=seed).split(train_features):
        reference[scored] = _fit_reduction(train_features[fitted], n_components).distances(train_features[scored])
    reference.sort()
    if held_out_features is not None and len(held_out_features):
        held = reduction.distances(held_out_features)
        threshold, source, n_held = float(np.percentile(held, percentile)), "held-out", len(held)
    else:
        threshold, source, n_held = float(np.percentile(reference, percentile)), "cross-fitted training", 0
    logger.info(
        "OOD description: %s features (%d) -> %d components; threshold %.3g (%s, %g th percentile)",
        features, train_features.shape[1], reduction.components.shape[0], threshold, source, percentile,
    )
    return OODDescription(
        features=features, reduction=reduction, reference=reference, threshold=threshold,
        threshold_source=source, percentile=percentile, n_train=n, n_held_out=n_held,
    )


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
    return (
        f"{summary.get('features')} features -> {summary.get('n_components')} components, "
        f"{summary.get('n_train')} training exams; flag above distance {float(summary.get('threshold', float('nan'))):.3g} "
        f"({summary.get('percentile')} th percentile of {summary.get('n_held_out') or ''} "
        f"{summary.get('threshold_source')} exams)"
    )


def describe_cache(
    network: MeanVarianceResNet,
    cache_exams: list[tuple[str, Any]],
    held_out: set[str],
    features: str = DEFAULT_FEATURES,
    *,
    batch_size: int = 16,
    n_components: int | None = DEFAULT_COMPONENTS,
    percentile: float = DEFAULT_PERCENTILE,
) -> OODDescription:
    """The description of cached images (stem, path): `held_out` stems set the threshold, the
    others are the training exams. Images that cannot be loaded are left out (and logged)."""
    from mimir.inference.batching import CachedExam, iter_batches

    exams = [CachedExam(stem, path) for stem, path in cache_exams]
    collected: dict[str, np.ndarray] = {}
    for batch in iter_batches(exams, batch_size):
        for stem, reason in batch.failures.items():
            logger.warning("OOD description: %s left out: %s", stem, reason)
        if batch.stems:
            values = batched_features(network, [batch.images.numpy()], features)
            collected.update(zip(batch.stems, values, strict=True))
    train = [collected[stem] for stem in collected if stem not in held_out]
    held = [collected[stem] for stem in collected if stem in held_out]
    if not train:
        raise OODError("no training image could be loaded for the OOD description")
    logger.info("OOD description from %d training and %d held-out images", len(train), len(held))
    return fit_description(
        np.stack(train), np.stack(held) if held else None, features, n_components=n_components, percentile=percentile
    )
