import math

import numpy as np
import pytest
from scipy.stats import norm

from mimir.evaluation.calibration import (
    CENTRAL_INTERVALS,
    apply_variance_scale,
    area_under_calibration_error,
    auce,
    calibration_curve,
    fit_variance_scale,
    sparsification_curve,
    standardised_errors,
)


def gaussian_sample(n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heteroscedastic predictions whose sd is exactly the spread of the reference around them."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(10.0, 3.0, n)
    sd = rng.uniform(0.2, 2.0, n)
    reference = mean + sd * rng.standard_normal(n)
    return mean, sd, reference


def test_true_gaussian_lies_on_the_diagonal():
    mean, sd, reference = gaussian_sample()
    curve = calibration_curve(mean, sd, reference)
    np.testing.assert_allclose(curve.expected, CENTRAL_INTERVALS)
    np.testing.assert_allclose(curve.observed, curve.expected, atol=0.015)
    assert curve.observed[-1] == 1.0
    assert curve.n == mean.size
    assert curve.auce < 0.01


def test_variance_four_times_too_large_is_far_from_the_diagonal_as_predicted():
    mean, sd, reference = gaussian_sample()
    curve = calibration_curve(mean, 2.0 * sd, reference)
    # |z| halves, so the interval of coverage p holds the share 2 Phi(2 q_p) - 1 of the references.
    exact = 2 * norm.cdf(2 * norm.ppf(0.5 + CENTRAL_INTERVALS / 2)) - 1
    np.testing.assert_allclose(curve.observed, exact, atol=0.015)
    assert curve.auce > 0.15
    assert curve.auce == pytest.approx(area_under_calibration_error(CENTRAL_INTERVALS, exact), abs=0.01)


def test_auce_trapezoid_by_hand():
    # Gap 0.2 at p = 0.5, 0 at p = 0 and p = 1: two triangles of area 0.5 * 0.5 * 0.2.
    assert area_under_calibration_error([0.5, 1.0], [0.7, 1.0]) == pytest.approx(0.1)
    # On the published grid the rule is 0.1 times the summed gaps.
    gaps = np.linspace(0.05, 0.0, 10)
    assert area_under_calibration_error(CENTRAL_INTERVALS, CENTRAL_INTERVALS + gaps) == pytest.approx(0.1 * gaps.sum())
    assert math.isnan(area_under_calibration_error([0.5], [math.nan]))


def test_extreme_curves_bound_auce_by_one_half():
    # Every interval holds everything (sd far too large): the jump at p = 0 is cut by the trapezoid.
    assert area_under_calibration_error(CENTRAL_INTERVALS, np.ones(10)) == pytest.approx(0.45)
    # Nothing inside any interval (only possible with zero sd): the triangle below the diagonal.
    assert area_under_calibration_error(CENTRAL_INTERVALS, np.zeros(10)) == pytest.approx(0.5)


def test_scale_factor_recovers_known_misscaling():
    mean, sd, reference = gaussian_sample(seed=1)
    overconfident_sd = sd / 1.5
    factor = fit_variance_scale(mean, overconfident_sd, reference)
    assert factor == pytest.approx(1.5**2, rel=0.04)
    assert auce(mean, overconfident_sd, reference) > 0.05
    assert auce(mean, apply_variance_scale(overconfident_sd, factor), reference) < 0.01
    assert fit_variance_scale(mean, 3.0 * sd, reference) == pytest.approx(1 / 9, rel=0.04)


def test_scale_factor_is_the_nll_minimiser():
    mean, sd, reference = gaussian_sample(n=2000, seed=2)
    factor = fit_variance_scale(mean, sd * 0.7, reference)

    def nll(c: float) -> float:
        variance = c * (0.7 * sd) ** 2
        return float(np.mean(np.log(variance) + (reference - mean) ** 2 / variance))

    assert nll(factor) < nll(factor * 1.02)
    assert nll(factor) < nll(factor / 1.02)


def test_apply_variance_scale_multiplies_variance():
    np.testing.assert_allclose(apply_variance_scale([1.0, 2.0], 4.0), [2.0, 4.0])
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            apply_variance_scale([1.0], bad)


def test_nan_triples_dropped_and_zero_sd_is_overconfident():
    z = standardised_errors([0.0, 0.0, 1.0, 2.0], [1.0, math.nan, 0.0, 0.0], [1.0, 5.0, 3.0, 2.0])
    assert z[0] == 1.0 and math.isinf(z[1]) and z.size == 2  # zero sd and zero error is dropped
    curve = calibration_curve([0.0, 1.0], [1.0, 0.0], [0.1, 3.0])
    assert curve.observed[-1] == 0.5
    empty = calibration_curve([math.nan], [1.0], [1.0])
    assert empty.n == 0 and math.isnan(empty.auce)
    assert math.isnan(fit_variance_scale([math.nan], [1.0], [1.0]))


def test_negative_sd_is_rejected():
    with pytest.raises(ValueError, match="negative"):
        calibration_curve([0.0], [-1.0], [0.0])


def test_sparsification_by_hand():
    errors = np.array([4.0, 1.0, 3.0, 2.0])
    sd = np.array([0.5, 3.0, 2.0, 1.0])  # ranks the errors poorly: removes the error 1 first
    curve = sparsification_curve(np.zeros(4), sd, errors, fractions=[0.0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(curve.by_uncertainty, [2.5, 3.0, 3.0, 4.0])
    np.testing.assert_allclose(curve.oracle, [2.5, 2.0, 1.5, 1.0])


def test_informative_uncertainty_approaches_oracle():
    mean, sd, reference = gaussian_sample(n=5000, seed=3)
    curve = sparsification_curve(mean, sd, reference)
    np.testing.assert_allclose(curve.fractions, np.arange(10) / 10)
    assert curve.by_uncertainty[0] == pytest.approx(np.mean(np.abs(reference - mean)))
    assert curve.by_uncertainty[0] == pytest.approx(curve.oracle[0])
    assert np.all(np.diff(curve.by_uncertainty) < 0)
    assert np.all(curve.oracle <= curve.by_uncertainty + 1e-12)
    uninformative = sparsification_curve(mean, np.ones_like(sd), reference)
    assert uninformative.by_uncertainty[-1] > 1.5 * curve.by_uncertainty[-1]
