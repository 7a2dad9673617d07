import pickle
from fractions import Fraction
from urllib.error import URLError

import pytest
import torch
from safetensors.torch import save_file
from torchvision import models

from mimir.architectures import ARCHITECTURES
from mimir.errors import PathNotFoundError
from mimir.network import (
    RESNETS,
    InitWeightsError,
    MeanVarianceResNet,
    PretrainedWeightsUnavailable,
    build_network,
    split_output,
)


def test_network_builds_exactly_the_named_architectures():
    assert tuple(RESNETS) == ARCHITECTURES


def test_parameter_names_match_torchvision_so_published_weights_load():
    network = MeanVarianceResNet("resnet18", n_targets=3, input_pool=4)
    reference = models.resnet18(weights=None)
    assert list(network.state_dict()) == list(reference.state_dict())
    assert network.fc.out_features == 6


def test_output_is_interleaved_mean_then_log_variance_per_target():
    output = torch.tensor([[1.0, -1.0, 2.0, -2.0, 3.0, -3.0]])
    mean, log_var = split_output(output)
    assert mean.tolist() == [[1.0, 2.0, 3.0]]
    assert log_var.tolist() == [[-1.0, -2.0, -3.0]]


def test_log_variance_is_clamped():
    _, log_var = split_output(torch.tensor([[0.0, 50.0, 0.0, -50.0]]), (-7.0, 7.0))
    assert log_var.tolist() == [[7.0, -7.0]]


def test_forward_shape_with_input_pooling():
    network = MeanVarianceResNet("resnet18", n_targets=2, input_pool=4).eval()
    with torch.no_grad():
        output = network(torch.zeros(2, 3, 256, 256))
    assert output.shape == (2, 4)


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="unknown architecture"):
        MeanVarianceResNet("__class__", 1)


def _distinct_resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    return models.resnet18(weights=None).state_dict()


def test_init_from_torch_checkpoint_keeps_backbone_and_fresh_final_layer(tmp_path):
    state = _distinct_resnet18_state()
    path = tmp_path / "snapshot.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    network = build_network("resnet18", 2, init=str(path))
    assert torch.equal(network.conv1.weight, state["conv1.weight"])
    assert torch.equal(network.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert network.fc.weight.shape == (4, 512)


def test_init_from_safetensors_with_matching_final_layer_loads_it(tmp_path):
    source = MeanVarianceResNet("resnet18", 2)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    network = build_network("resnet18", 2, init=str(path))
    assert torch.equal(network.fc.weight, source.fc.weight)


def test_init_loads_with_weights_only_and_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _distinct_resnet18_state(), "payload": Fraction(1, 3)}, path)
    with pytest.raises(pickle.UnpicklingError):
        build_network("resnet18", 1, init=str(path))


def test_init_from_another_architecture_is_a_clear_error(tmp_path):
    path = tmp_path / "resnet34.pt"
    torch.save(models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(InitWeightsError, match="resnet18"):
        build_network("resnet18", 1, init=str(path))
    with pytest.raises(PathNotFoundError, match="initial weights file not found"):
        build_network("resnet18", 1, init=str(tmp_path / "absent.pt"))


def test_imagenet_init_offline_points_to_init_path(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(PretrainedWeightsUnavailable, match="--init PATH"):
        build_network("resnet18", 1, init="imagenet")


def test_imagenet_init_uses_the_torch_hub_cache(monkeypatch, tmp_path):
    state = _distinct_resnet18_state()
    url = models.ResNet18_Weights.IMAGENET1K_V1.url
    (tmp_path / "checkpoints").mkdir()
    torch.save(state, tmp_path / "checkpoints" / url.rsplit("/", 1)[-1])
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    network = build_network("resnet18", 1, init="imagenet")
    assert torch.equal(network.conv1.weight, state["conv1.weight"])
