import math

import numpy as np
import pytest
import torch

from mimir.inference.modules import ModuleSpec, Provenance, TargetSpec
from mimir.inference.postprocess import Z95, postprocess, reported_values, uncertain_flags


def _spec(log_var_range=None, n_train=(None, None), sd_p99=(None, None)) -> ModuleSpec:
    targets = (
        TargetSpec("height", 12144, "cm", "continuous", mean=170.0, sd=10.0, calibration=2.0, n_train=n_train[0], sd_p99=sd_p99[0]),
        TargetSpec("weight", 21002, "kg", "continuous", mean=80.0, sd=15.0, calibration=0.5, n_train=n_train[1], sd_p99=sd_p99[1]),
    )
    return ModuleSpec("test", "resnet18", targets, Provenance("training"), log_var_range=log_var_range)


def test_postprocess_undoes_standardisation_and_applies_calibration():
    raw = np.array([[1.0, 0.0, -2.0, math.log(4.0)], [0.0, 2.0, 0.5, -1.0]])
    mean, sd = postprocess(raw, _spec())
    np.testing.assert_allclose(mean, [[180.0, 50.0], [170.0, 87.5]])
    expected_sd = np.sqrt(
        [[1.0 * 100 * 2.0, 4.0 * 225 * 0.5], [math.exp(2.0) * 100 * 2.0, math.exp(-1.0) * 225 * 0.5]]
    )
    np.testing.assert_allclose(sd, expected_sd, rtol=1e-14)
    assert mean.dtype == np.float64 and sd.dtype == np.float64


def test_postprocess_accepts_tensors_and_clamps_when_the_module_says_so():
    raw = torch.tensor([[0.0, 30.0, 0.0, -30.0]])
    _, free = postprocess(raw, _spec())
    _, clamped = postprocess(raw, _spec(log_var_range=(-10.0, 10.0)))
    np.testing.assert_allclose(free[0], [math.sqrt(math.exp(30.0) * 200), math.sqrt(math.exp(-30.0) * 112.5)])
    np.testing.assert_allclose(clamped[0], [math.sqrt(math.exp(10.0) * 200), math.sqrt(math.exp(-10.0) * 112.5)])


def test_untrained_targets_are_nan():
    mean, sd = postprocess(np.zeros((3, 4)), _spec(n_train=(0, 12)))
    assert np.isnan(mean[:, 0]).all() and np.isnan(sd[:, 0]).all()
    assert np.isfinite(mean[:, 1]).all() and np.isfinite(sd[:, 1]).all()


def test_wrong_output_width_is_refused():
    with pytest.raises(ValueError, match="2 targets"):
        postprocess(np.zeros((1, 6)), _spec())


def _kinds_spec(sd_p99: float | None = 2.0) -> ModuleSpec:
    """One target of each interval kind: a temperature-like score that may be negative, a volume, sex."""
    targets = (
        TargetSpec("score", None, "z", "continuous", mean=0.0, sd=1.0, sd_p99=sd_p99),
        TargetSpec("AtlasVatVolume", 22407, "L", "continuous", mean=3.0, sd=2.0, sd_p99=sd_p99),
        TargetSpec("sex", 31, "male=1", "binary", mean=0.5, sd=0.5, sd_p99=sd_p99),
    )
    return ModuleSpec("kinds", "resnet18", targets, Provenance("training"))


def test_uncertain_flags_use_the_crossvalidation_percentile():
    mean = np.full((3, 2), 100.0)
    flags = uncertain_flags(mean, np.array([[5.0, 5.0], [20.0, 20.0], [np.nan, 1.0]]), _spec(sd_p99=(10.0, None)))
    assert flags.tolist() == [[False, False], [True, False], [False, False]]


def test_uncertain_flags_never_fire_for_a_binary_target_and_fire_for_an_interval_below_0():
    mean = np.array([[-5.0, -5.0, 0.5], [0.0, 1.0, 0.5], [0.0, -0.2, -0.2]])
    sd = np.array([[1.0, 1.0, 9.0], [3.0, 3.0, 0.1], [0.1, 0.2, 0.1]])
    flags = uncertain_flags(mean, sd, _kinds_spec())
    # row 0: a score may be negative, a volume's interval wholly below 0 is not a measurement,
    # a binary target is not flagged however large its sd; row 1: sd above the threshold (2.0);
    # row 2: a volume whose interval reaches above 0 is bounded, not flagged
    assert flags.tolist() == [[False, True, False], [True, True, False], [False, False, False]]


def test_reported_values_bound_non_negative_targets_and_make_binary_targets_probabilities():
    mean = np.array([[-1.0, -1.0, 1.3], [2.0, 2.0, -0.2], [0.0, 5.0, 0.7]])
    sd = np.array([[1.0, 1.0, 0.4], [1.5, 1.5, 0.4], [1.0, 1.0, 0.4]])
    values = reported_values(mean, sd, _kinds_spec())
    # a score keeps the plain normal interval, below 0 included
    np.testing.assert_allclose(values.low[:, 0], mean[:, 0] - Z95 * sd[:, 0])
    np.testing.assert_allclose(values.high[:, 0], mean[:, 0] + Z95 * sd[:, 0])
    np.testing.assert_array_equal(values.mean[:, 0], mean[:, 0])
    # a volume: mean and bounds at 0 or above, the upper bound of the normal interval kept
    np.testing.assert_allclose(values.mean[:, 1], [0.0, 2.0, 5.0])
    np.testing.assert_allclose(values.low[:, 1], [0.0, 0.0, 5.0 - Z95])
    np.testing.assert_allclose(values.high[:, 1], mean[:, 1] + Z95 * sd[:, 1])
    np.testing.assert_array_equal(values.sd[:, 1], sd[:, 1])
    # sex: the mean clipped to a probability, no sd and no interval
    np.testing.assert_allclose(values.mean[:, 2], [1.0, 0.0, 0.7])
    for statistic in (values.sd, values.low, values.high):
        assert np.isnan(statistic[:, 2]).all()
    assert (mean == np.array([[-1.0, -1.0, 1.3], [2.0, 2.0, -0.2], [0.0, 5.0, 0.7]])).all(), "inputs unchanged"


def test_untrained_targets_stay_missing_in_every_reported_value():
    values = reported_values(np.full((2, 3), np.nan), np.full((2, 3), np.nan), _kinds_spec())
    for statistic in (values.mean, values.sd, values.low, values.high):
        assert np.isnan(statistic).all()
