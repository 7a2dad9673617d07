import pytest
import torch
from torch import nn

from mimir.learn.weight_average import WeightAverage


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_average_follows_the_ramped_exponential_decay():
    network = _network()
    average = WeightAverage(network, decay=0.9)
    expected = network[0].weight.detach().clone()
    for step in range(30):
        with torch.no_grad():
            network[0].weight.add_(1.0)
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * network[0].weight.detach()
        average.update(network)
    assert torch.allclose(average.shadow["0.weight"], expected)
    assert average.updates == 30


def test_buffers_are_averaged_and_counters_copied():
    network = _network()
    average = WeightAverage(network, decay=0.5)
    network.train()
    network(torch.randn(8, 3))
    average.update(network)
    assert average.shadow["1.num_batches_tracked"].item() == 1
    running = network[1].running_mean
    assert torch.allclose(average.shadow["1.running_mean"], 0.1 * torch.zeros(2) + 0.9 * running)


def test_applied_swaps_the_average_in_and_the_live_weights_back():
    network = _network()
    average = WeightAverage(network, decay=0.5)
    initial = network[0].weight.detach().clone()
    with torch.no_grad():
        network[0].weight.mul_(3.0)
    live = network[0].weight.detach().clone()
    with average.applied(network):
        assert torch.equal(network[0].weight, initial)
    assert torch.equal(network[0].weight, live)


def test_state_round_trip_and_mismatch():
    network = _network()
    average = WeightAverage(network, decay=0.5)
    with torch.no_grad():
        network[0].bias.add_(2.0)
    average.update(network)
    restored = WeightAverage(_network(), decay=0.5)
    restored.load_state_dict(average.state_dict())
    assert restored.updates == 1
    assert all(torch.equal(restored.shadow[k], average.shadow[k]) for k in average.shadow)
    with pytest.raises(ValueError, match="does not match"):
        WeightAverage(nn.Linear(3, 2), decay=0.5).load_state_dict(average.state_dict())
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(network, decay=1.0)
