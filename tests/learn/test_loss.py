import math

import torch

from mimir.learn.loss import gaussian_nll


def test_matches_formula_on_known_values():
    mean = torch.tensor([[0.5, 1.0]])
    log_var = torch.tensor([[0.2, -0.3]])
    targets = torch.tensor([[1.5, 2.0]])
    expected = ((math.exp(-0.2) * 1.0 + 0.2) + (math.exp(0.3) * 1.0 - 0.3)) / 2
    assert math.isclose(gaussian_nll(mean, log_var, targets).item(), expected, rel_tol=1e-6)


def test_missing_values_are_ignored_in_the_average():
    mean = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    log_var = torch.zeros(2, 2)
    targets = torch.tensor([[2.0, float("nan")], [float("nan"), float("nan")]])
    assert gaussian_nll(mean, log_var, targets).item() == 4.0


def test_fully_missing_target_gets_zero_gradient_and_finite_loss():
    mean = torch.randn(4, 3, requires_grad=True)
    log_var = torch.randn(4, 3, requires_grad=True)
    targets = torch.randn(4, 3)
    targets[:, 1] = float("nan")
    targets[0, 2] = float("nan")
    loss = gaussian_nll(mean, log_var, targets)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(mean.grad[:, 1] == 0) and torch.all(log_var.grad[:, 1] == 0)
    assert mean.grad[0, 2] == 0 and log_var.grad[0, 2] == 0
    assert torch.all(mean.grad[:, 0] != 0)


def test_batch_without_any_known_value_has_zero_loss_and_backward_works():
    mean = torch.randn(2, 2, requires_grad=True)
    log_var = torch.randn(2, 2, requires_grad=True)
    loss = gaussian_nll(mean, log_var, torch.full((2, 2), float("nan")))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(mean.grad == 0)
