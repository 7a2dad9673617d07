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


def test_beta_one_gives_the_mean_the_gradient_of_squared_error_whatever_the_variance():
    targets = torch.tensor([[1.0, 1.0]])
    mean = torch.zeros(1, 2, requires_grad=True)
    log_var = torch.tensor([[0.0, 3.0]], requires_grad=True)
    gaussian_nll(mean, log_var, targets, beta=1.0).backward()
    # d/dmean of (y - mean)^2 averaged over two values: -(y - mean) = -1 for both
    assert torch.allclose(mean.grad, torch.tensor([[-1.0, -1.0]]))


def test_beta_keeps_the_variance_gradient_direction_and_masking():
    targets = torch.tensor([[2.0, float("nan")]])
    mean = torch.zeros(1, 2, requires_grad=True)
    log_var = torch.zeros(1, 2, requires_grad=True)
    plain = gaussian_nll(mean, log_var, targets)
    weighted = gaussian_nll(mean, log_var, targets, beta=0.5)
    assert math.isclose(plain.item(), weighted.item(), rel_tol=1e-6)  # variance 1: weight 1
    weighted.backward()
    assert log_var.grad[0, 0] < 0 and log_var.grad[0, 1] == 0 and mean.grad[0, 1] == 0
