"""The module runner: batch norm folded, reduced precision close to float32, the given module untouched."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from mimir.inference.modules import load_module
from mimir.inference.runner import ModuleRunner, fold_batch_norm

_HELPERS = importlib.util.spec_from_file_location("synthetic_modules", Path(__file__).with_name("synthetic_modules.py"))
helpers = importlib.util.module_from_spec(_HELPERS)
_HELPERS.loader.exec_module(helpers)

STEMS = helpers.STEMS


def test_bfloat16_means_within_0_02_sd_of_float32(modules, cache):
    images = torch.from_numpy(np.stack([np.load(cache / f"{stem}.npy") for stem in STEMS]))
    for path in modules:
        full_module, half_module = load_module(path), load_module(path)
        full = ModuleRunner(full_module, None).predict(images)
        half = ModuleRunner(half_module, torch.bfloat16).predict(images)
        target_sd = np.array([target.sd for target in full_module.spec.targets])
        deviation = np.abs(half[0] - full[0]).max(axis=0) / target_sd
        assert (deviation <= 0.02).all(), deviation
        np.testing.assert_allclose(half[1], full[1], rtol=0.1)
        assert not np.array_equal(half[0], full[0])  # bfloat16 really ran


def test_folding_batch_norm_keeps_the_output(modules, cache):
    images = torch.from_numpy(np.stack([np.load(cache / f"{stem}.npy") for stem in STEMS])).float()
    network = load_module(modules[0]).network
    with torch.no_grad():
        before = network(images)
        assert fold_batch_norm(network) == 20  # resnet18: stem, 16 in blocks, 3 downsamples
        assert not any(isinstance(layer, torch.nn.BatchNorm2d) for layer in network.modules())
        torch.testing.assert_close(network(images), before, rtol=1e-4, atol=1e-4)


def test_the_module_given_is_left_as_it_was(modules, cache):
    images = torch.from_numpy(np.stack([np.load(cache / f"{stem}.npy") for stem in STEMS]))
    module = load_module(modules[0])
    state = {name: value.clone() for name, value in module.network.state_dict().items()}
    before = module.predict_arrays(images)
    runner = ModuleRunner(module, None)
    runner.predict(images)
    after = module.predict_arrays(images)
    assert list(module.network.state_dict()) == list(state)
    for name, value in module.network.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert all(parameter.is_contiguous() for parameter in module.network.parameters())  # not channels-last
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    assert not any(isinstance(layer, torch.nn.BatchNorm2d) for layer in runner.network.modules())
