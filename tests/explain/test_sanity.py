"""Model-randomisation check (Adebayo et al. 2018): the maps must depend on the trained weights.

For every method, the maps of a trained module and of the same module with every layer
re-initialised from the top down must rank pixels differently: mean Spearman correlation over
the exams below 0.5. Pixels are compared inside the body: outside it the image is black, and
integrated gradients from a black baseline is exactly zero there for any network, which would
make any two maps look alike (docs/explain.md gives the whole-image values as well).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mimir.explain import DEFAULT_LAYER, METHOD_NAMES
from mimir.explain.aggregate import image_body_mask
from mimir.explain.maps import LAYER_METHODS, METHODS, saliency
from mimir.explain.sanity import CASCADE, mask_share, randomised, rank_correlation
from mimir.imaging.cache import load_image
from mimir.inference.modules import load_module

MAX_RANK_CORRELATION = 0.5
N_EXAMS = 3


@pytest.fixture(scope="module")
def images(trained) -> np.ndarray:
    return np.stack([load_image(trained.cache / f"{stem}.npy") for stem in trained.stems[:N_EXAMS]])


def test_the_cli_lists_exactly_the_methods_there_are():
    assert METHOD_NAMES == tuple(METHODS)


@pytest.mark.parametrize(("method", "layer"), [
    *((method, DEFAULT_LAYER) for method in METHOD_NAMES), *((method, "layer3") for method in LAYER_METHODS),
])
def test_maps_of_a_randomised_module_rank_pixels_differently(trained, images, method, layer):
    network = load_module(trained.module).network
    network_input = torch.from_numpy(images).float()
    maps = saliency(network, 0, network_input, method, layer=layer).numpy()
    random_maps = saliency(randomised(network, len(CASCADE)), 0, network_input, method, layer=layer).numpy()
    assert maps.shape == random_maps.shape == (N_EXAMS, 256, 256)
    assert np.isfinite(maps).all() and (maps >= 0).all() and maps.max() > 0
    body = [image_body_mask(image) for image in images]
    assert all(np.ptp(maps[k][body[k]]) > 0 for k in range(N_EXAMS))  # the trained maps have structure
    correlations = [rank_correlation(maps[k][body[k]], random_maps[k][body[k]]) for k in range(N_EXAMS)]
    assert np.mean(correlations) < MAX_RANK_CORRELATION, correlations


def test_a_map_is_identical_to_itself_and_randomising_leaves_the_module_unchanged(trained, images):
    network = load_module(trained.module).network
    before = {name: value.clone() for name, value in network.state_dict().items()}
    network_input = torch.from_numpy(images[:1]).float()
    first = saliency(network, 0, network_input, "gradcam").numpy()
    randomised(network, 2)
    second = saliency(network, 0, network_input, "gradcam").numpy()
    assert rank_correlation(first[0], second[0]) == pytest.approx(1.0)
    assert all(torch.equal(before[name], value) for name, value in network.state_dict().items())


def test_randomising_resets_only_the_top_blocks():
    from mimir.network import MeanVarianceResNet

    torch.manual_seed(0)
    network = MeanVarianceResNet("resnet18", 1, input_pool=4)
    copied = randomised(network, 2, seed=1)
    assert not torch.equal(copied.fc.weight, network.fc.weight)
    assert not torch.equal(copied.layer4[0].conv1.weight, network.layer4[0].conv1.weight)
    assert torch.equal(copied.layer3[0].conv1.weight, network.layer3[0].conv1.weight)
    with pytest.raises(ValueError):
        randomised(network, len(CASCADE) + 1)


def test_rank_correlation_and_mask_share():
    ramp = np.arange(16.0).reshape(4, 4)
    assert rank_correlation(ramp, ramp**2) == pytest.approx(1.0)
    assert rank_correlation(ramp, -ramp) == pytest.approx(-1.0)
    assert rank_correlation(ramp, np.ones((4, 4))) == 0.0
    mask = np.zeros((4, 4), dtype=bool)
    mask[0] = True
    assert mask_share(ramp, mask) == pytest.approx(6.0 / 120.0)
    assert np.isnan(mask_share(np.zeros((4, 4)), mask))
