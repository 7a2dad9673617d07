import math

import numpy as np
import pytest
import torch

from mimir.inference.modules import ModuleSpec, Provenance, TargetSpec
from mimir.inference.postprocess import postprocess, uncertain_flags


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


def test_uncertain_flags_use_the_crossvalidation_percentile():
    flags = uncertain_flags(np.array([[5.0, 5.0], [20.0, 20.0], [np.nan, 1.0]]), _spec(sd_p99=(10.0, None)))
    assert flags.tolist() == [[False, False], [True, False], [False, False]]
