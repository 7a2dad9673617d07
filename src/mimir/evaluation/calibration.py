"""How trustworthy the predicted uncertainties are, and the post-hoc fix for them.

A prediction is a Gaussian (mean, sd). If the sd is right, the standardised error
z = (reference - mean) / sd is standard normal, so the central interval with coverage p
(|z| < Phi^-1(0.5 + p/2)) contains a share p of the references. The calibration curve plots
that share against p; the sparsification curve checks that larger sd marks larger errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import ndtri

#: Central interval coverages of the published calibration curve.
CENTRAL_INTERVALS = np.round(np.arange(1, 11) / 10.0, 1)
#: Shares of the most uncertain predictions removed along the sparsification curve.
SPARSIFICATION_FRACTIONS = np.round(np.arange(0, 10) / 10.0, 1)


def standardised_errors(mean: ArrayLike, sd: ArrayLike, reference: ArrayLike) -> np.ndarray:
    """z = (reference - mean) / sd for the usable triples.

    Triples with a NaN anywhere are dropped. A zero sd with a non-zero error gives |z| = inf
    (outside every interval: an overconfident prediction); zero sd and zero error is dropped.
    """
    means, sds, references = _aligned(mean, sd, reference)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (references - means) / sds
    return z[~np.isnan(z)]


def _aligned(mean: ArrayLike, sd: ArrayLike, reference: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = [np.asarray(values, dtype=np.float64).ravel() for values in (mean, sd, reference)]
    if len({array.size for array in arrays}) != 1:
        raise ValueError(f"mean, sd and reference differ in length: {[array.size for array in arrays]}")
    means, sds, references = arrays
    if np.any(sds < 0):
        raise ValueError("standard deviations must not be negative")
    keep = np.isfinite(means) & np.isfinite(sds) & np.isfinite(references)
    return means[keep], sds[keep], references[keep]


@dataclass(frozen=True)
class CalibrationCurve:
    """Observed coverage of each central interval; `expected` is the nominal coverage p."""

    expected: np.ndarray
    observed: np.ndarray
    n: int

    @property
    def auce(self) -> float:
        return area_under_calibration_error(self.expected, self.observed)


def calibration_curve(
    mean: ArrayLike, sd: ArrayLike, reference: ArrayLike, intervals: ArrayLike = CENTRAL_INTERVALS
) -> CalibrationCurve:
    """Share of references inside each central interval of the predicted Gaussian.

    For p = 1 the interval is the whole line (quantile inf), so its share is 1 unless some
    prediction has zero sd and a non-zero error. Without usable triples the shares are NaN.
    """
    coverages = np.asarray(intervals, dtype=np.float64)
    if np.any((coverages <= 0) | (coverages > 1)):
        raise ValueError("central interval coverages must lie in (0, 1]")
    z = np.abs(standardised_errors(mean, sd, reference))
    if z.size == 0:
        return CalibrationCurve(coverages, np.full(coverages.shape, math.nan), 0)
    half_widths = ndtri(0.5 + coverages / 2.0)
    observed = np.mean(z[:, None] < half_widths[None, :], axis=0)
    return CalibrationCurve(coverages, observed, int(z.size))


def area_under_calibration_error(expected: ArrayLike, observed: ArrayLike) -> float:
    """AUCE: area between the calibration curve and the diagonal, over coverage 0..1.

    Integration rule: trapezoidal rule on |observed - expected| at the given coverages plus
    the point (0, 0), which every curve passes through. On the published grid 0.1 ... 1.0
    (where the gap at p = 1 is zero for finite z) this equals 0.1 times the sum of the gaps,
    so 0 is perfect calibration and 0.5 the worst possible. Crossings of the diagonal between
    grid points are not resolved, which can only overstate the area slightly.
    """
    coverages = np.asarray(expected, dtype=np.float64)
    shares = np.asarray(observed, dtype=np.float64)
    if np.any(np.isnan(shares)):
        return math.nan
    order = np.argsort(coverages)
    coverages = np.concatenate([[0.0], coverages[order]])
    gaps = np.concatenate([[0.0], np.abs(shares[order] - coverages[1:])])
    return float(np.sum((gaps[1:] + gaps[:-1]) / 2.0 * np.diff(coverages)))


def auce(mean: ArrayLike, sd: ArrayLike, reference: ArrayLike) -> float:
    """AUCE of Gaussian predictions on the published interval grid."""
    return calibration_curve(mean, sd, reference).auce


@dataclass(frozen=True)
class SparsificationCurve:
    """MAE of the predictions kept after removing a share of them.

    `by_uncertainty` removes the largest sd first; `oracle` removes the largest true error
    first, the best any uncertainty ranking could do.
    """

    fractions: np.ndarray
    by_uncertainty: np.ndarray
    oracle: np.ndarray
    n: int


def sparsification_curve(
    mean: ArrayLike, sd: ArrayLike, reference: ArrayLike, fractions: ArrayLike = SPARSIFICATION_FRACTIONS
) -> SparsificationCurve:
    """MAE as the most uncertain predictions are removed, with the oracle ordering beside it.

    Removing a share f keeps the n - round(f * n) predictions ranked lowest; ties in sd are
    broken by input order (a stable sort), so the curve is deterministic.
    """
    shares = np.asarray(fractions, dtype=np.float64)
    if np.any((shares < 0) | (shares >= 1)):
        raise ValueError("removed fractions must lie in [0, 1)")
    means, sds, references = _aligned(mean, sd, reference)
    errors = np.abs(references - means)
    n = errors.size
    if n == 0:
        empty = np.full(shares.shape, math.nan)
        return SparsificationCurve(shares, empty, empty.copy(), 0)
    kept = n - np.round(shares * n).astype(int)
    return SparsificationCurve(
        fractions=shares,
        by_uncertainty=_mae_of_lowest(errors, sds, kept),
        oracle=_mae_of_lowest(errors, errors, kept),
        n=n,
    )


def _mae_of_lowest(errors: np.ndarray, ranking: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Mean error of the `kept` entries ranked lowest, for each count in `kept`."""
    ordered = errors[np.argsort(ranking, kind="stable")]
    running_sum = np.concatenate([[0.0], np.cumsum(ordered)])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(kept > 0, running_sum[kept] / kept, math.nan)


def fit_variance_scale(mean: ArrayLike, sd: ArrayLike, reference: ArrayLike) -> float:
    """One factor c for the predicted variances (var -> c * var) fitted on held-out predictions.

    Objective: the Gaussian negative log-likelihood of the references, the same criterion the
    networks are trained on. Per triple it is log(c var) + (y - mu)^2 / (c var) up to
    constants; setting the derivative in c to zero gives the closed form c = mean(z^2). We
    prefer it to minimising AUCE because it is smooth with a unique optimum, needs no
    search, and uses every error's size rather than only which interval it falls into (AUCE
    is a step function of c and is flat over ranges of c). Its weakness is sensitivity to
    gross outliers (e.g. water-fat swaps), which inflate c; AUCE after scaling is still
    reported so that this shows. NaN without usable triples; inf if some sd is zero while
    its error is not.
    """
    z = standardised_errors(mean, sd, reference)
    if z.size == 0:
        return math.nan
    return float(np.mean(z**2))


def apply_variance_scale(sd: ArrayLike, factor: float) -> np.ndarray:
    """Standard deviations after scaling the variance by `factor` (sd * sqrt(factor))."""
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"a variance scale factor must be finite and positive, got {factor}")
    return np.asarray(sd, dtype=np.float64) * math.sqrt(factor)
