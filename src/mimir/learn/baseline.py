"""A ridge-regression baseline on downsampled images: what a linear model gets from the pixels.

Reported beside the network in cross-validation so that a reader sees what deep regression
adds. Each (3, 256, 256) image is average-pooled to (3, size, size), flattened and, per
training set, standardised (training mean and sample sd per feature). Per target, ridge
regression with an unpenalised intercept is fitted in closed form on the exams that know the
target, with penalty `alpha * n_train` on the standardised coefficients (so `alpha` means the
same whatever the cohort size). `alpha` is chosen per target and outer fold by an inner
cross-validation: the outer training folds are dealt into `inner_folds` groups, and the alpha
with the lowest summed squared error on the held-out groups wins.

Everything is computed from per-fold sufficient statistics (count, feature sums, X'X, X'y), so
every training set, inner or outer, costs one eigendecomposition of a features x features
matrix, whatever the number of exams, and all alphas share it. Targets with the same pattern
of known values share their statistics. Plain numpy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mimir.errors import MimirError
from mimir.imaging.cache import load_image
from mimir.protocol import IMAGE_SHAPE

logger = logging.getLogger(__name__)


class BaselineError(MimirError, ValueError):
    """A baseline configuration or input that cannot be used."""


@dataclass(frozen=True)
class BaselineConfig:
    """Settings of the ridge baseline."""

    # Pooled image side in pixels: 3 * size * size features. 16 (768 features) keeps each
    # eigendecomposition well under a second; 32 (3,072) costs ~64x more per training set.
    size: int = 16
    alphas: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
    inner_folds: int = 3

    def __post_init__(self) -> None:
        side = IMAGE_SHAPE[-1]
        if self.size < 1 or side % self.size:
            raise BaselineError(f"baseline size must divide {side}, got {self.size}")
        if not self.alphas or any(not alpha > 0 for alpha in self.alphas):
            raise BaselineError(f"baseline alphas must be positive, got {self.alphas}")
        if self.inner_folds < 2:
            raise BaselineError(f"the baseline's inner cross-validation needs >= 2 folds, got {self.inner_folds}")


def pool_image(image: np.ndarray, size: int) -> np.ndarray:
    """Average-pool a (channels, H, W) image to (channels, size, size), as float32."""
    channels, rows, columns = image.shape
    factor_rows, factor_columns = rows // size, columns // size
    blocks = image.astype(np.float32).reshape(channels, size, factor_rows, size, factor_columns)
    return blocks.mean(axis=(2, 4))


def image_features(paths: Sequence[Path], size: int) -> np.ndarray:
    """One row of pooled, flattened pixels per cached image (n, 3 * size * size), float32."""
    features = np.empty((len(paths), IMAGE_SHAPE[0] * size * size), dtype=np.float32)
    for row, path in enumerate(paths):
        features[row] = pool_image(load_image(Path(path)), size).ravel()
    return features


@dataclass
class _Statistics:
    """Sufficient statistics of a set of exams for linear regression on several targets."""

    n: float
    sum_x: np.ndarray
    xx: np.ndarray
    sum_y: np.ndarray
    xy: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> _Statistics:
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        return cls(float(len(x64)), x64.sum(axis=0), x64.T @ x64, y64.sum(axis=0), x64.T @ y64)

    def __add__(self, other: _Statistics) -> _Statistics:
        return _Statistics(
            self.n + other.n, self.sum_x + other.sum_x, self.xx + other.xx, self.sum_y + other.sum_y, self.xy + other.xy
        )

    def __sub__(self, other: _Statistics) -> _Statistics:
        return _Statistics(
            self.n - other.n, self.sum_x - other.sum_x, self.xx - other.xx, self.sum_y - other.sum_y, self.xy - other.xy
        )


@dataclass
class RidgeFit:
    """Raw-feature coefficients (features, targets, alphas) and intercepts (targets, alphas)."""

    coefficients: np.ndarray
    intercepts: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions (rows, targets, alphas)."""
        return np.einsum("nd,dta->nta", x.astype(np.float64), self.coefficients) + self.intercepts[None]


def fit_ridge(statistics: _Statistics, alphas: Sequence[float]) -> RidgeFit | None:
    """Ridge on standardised features for every alpha at once; None below two exams."""
    n = statistics.n
    if n < 2:
        return None
    mean_x = statistics.sum_x / n
    mean_y = statistics.sum_y / n
    centred_xx = statistics.xx - n * np.outer(mean_x, mean_x)
    centred_xy = statistics.xy - n * np.outer(mean_x, mean_y)
    variance = np.clip(np.diag(centred_xx), 0.0, None) / (n - 1)
    scale = np.sqrt(variance)
    scale[scale <= 1e-8 * max(float(scale.max(initial=0.0)), 1.0)] = 1.0
    gram = centred_xx / np.outer(scale, scale)
    rhs = centred_xy / scale[:, None]
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    projected = eigenvectors.T @ rhs  # (features, targets)
    penalties = np.asarray(alphas, dtype=np.float64) * n
    shrunk = projected[:, :, None] / (eigenvalues[:, None, None] + penalties[None, None, :])
    standardised = np.einsum("de,eta->dta", eigenvectors, shrunk)
    coefficients = standardised / scale[:, None, None]
    intercepts = mean_y[:, None] - np.einsum("d,dta->ta", mean_x, coefficients)
    return RidgeFit(coefficients, intercepts)


@dataclass
class _TargetGroup:
    """Targets known for exactly the same exams share one set of statistics."""

    columns: list[int]
    rows: np.ndarray  # exam indices where these targets are known
    per_fold: list[_Statistics] = field(default_factory=list)


@dataclass
class FoldBaseline:
    """Ridge predictions for one outer fold: every exam of the fold, every target."""

    fold: int
    rows: np.ndarray  # exam indices of the fold
    predictions: np.ndarray  # (rows, targets), NaN where a target had < 2 training values
    alphas: np.ndarray  # chosen alpha per target (NaN when not fitted)


class RidgeCrossval:
    """The ridge baseline over fixed folds; statistics are computed once and reused by each fold."""

    def __init__(self, features: np.ndarray, values: np.ndarray, fold: np.ndarray, folds: int, config: BaselineConfig):
        if len(features) != len(values) or len(values) != len(fold):
            raise BaselineError("features, values and fold labels need one row per exam")
        self.features, self.values, self.fold, self.folds, self.config = features, values, fold, folds, config
        self.groups = self._group_targets()

    def _group_targets(self) -> list[_TargetGroup]:
        known = ~np.isnan(self.values)
        patterns: dict[bytes, _TargetGroup] = {}
        for column in range(self.values.shape[1]):
            key = np.packbits(known[:, column]).tobytes()
            if key not in patterns:
                patterns[key] = _TargetGroup([], np.flatnonzero(known[:, column]))
            patterns[key].columns.append(column)
        groups = list(patterns.values())
        for group in groups:
            x, y = self.features[group.rows], self.values[np.ix_(group.rows, group.columns)]
            folds_of_rows = self.fold[group.rows]
            group.per_fold = [_Statistics.of(x[folds_of_rows == k], y[folds_of_rows == k]) for k in range(self.folds)]
        logger.debug("ridge baseline: %d targets in %d missingness groups", self.values.shape[1], len(groups))
        return groups

    def predict_fold(self, fold: int) -> FoldBaseline:
        test_rows = np.flatnonzero(self.fold == fold)
        n_targets = self.values.shape[1]
        predictions = np.full((len(test_rows), n_targets), np.nan)
        alphas = np.full(n_targets, np.nan)
        training_folds = [k for k in range(self.folds) if k != fold]
        for group in self.groups:
            chosen = self._choose_alphas(group, training_folds)
            if chosen is None:
                continue
            fit = fit_ridge(_total(group.per_fold, training_folds), self.config.alphas)
            if fit is None:
                continue
            all_alphas = fit.predict(self.features[test_rows])
            for position, column in enumerate(group.columns):
                predictions[:, column] = all_alphas[:, position, chosen[position]]
                alphas[column] = self.config.alphas[chosen[position]]
        return FoldBaseline(fold, test_rows, predictions, alphas)

    def _choose_alphas(self, group: _TargetGroup, training_folds: list[int]) -> np.ndarray | None:
        """Index of the alpha with the least inner cross-validated squared error, per target."""
        inner = min(self.config.inner_folds, len(training_folds))
        total = _total(group.per_fold, training_folds)
        if total.n < 2:
            return None
        squared_error = np.zeros((len(group.columns), len(self.config.alphas)))
        held_out_any = False
        for part in range(inner):
            held_out = training_folds[part::inner]
            fit = fit_ridge(total - _total(group.per_fold, held_out), self.config.alphas)
            rows = group.rows[np.isin(self.fold[group.rows], held_out)]
            if fit is None or len(rows) == 0:
                continue
            residual = fit.predict(self.features[rows]) - self.values[np.ix_(rows, group.columns)][:, :, None]
            squared_error += np.sum(residual**2, axis=0)
            held_out_any = True
        if not held_out_any:
            return np.full(len(group.columns), len(self.config.alphas) - 1)
        return np.argmin(squared_error, axis=1)


def _total(per_fold: list[_Statistics], folds: Sequence[int]) -> _Statistics:
    total = per_fold[folds[0]]
    for k in folds[1:]:
        total = total + per_fold[k]
    return total
