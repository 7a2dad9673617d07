"""Gaussian negative log-likelihood with missing targets masked out."""

from __future__ import annotations

import torch


def masked_nll_terms(mean: torch.Tensor, log_var: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """exp(-log_var) * (y - mean)^2 + log_var per value (0 where y is NaN) and the known mask.

    NaNs are replaced before the arithmetic, so missing values pass neither NaN nor gradient.
    """
    if not mean.shape == log_var.shape == targets.shape:
        raise ValueError(
            f"shape mismatch: mean {tuple(mean.shape)}, log_var {tuple(log_var.shape)}, targets {tuple(targets.shape)}"
        )
    known = ~torch.isnan(targets)
    filled = torch.where(known, targets, torch.zeros_like(targets))
    terms = torch.exp(-log_var) * (filled - mean) ** 2 + log_var
    return torch.where(known, terms, torch.zeros_like(terms)), known


def gaussian_nll(mean: torch.Tensor, log_var: torch.Tensor, targets: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
    """The training loss: the NLL averaged over the known target values of the batch.

    `beta` > 0 gives the beta-NLL of Seitzer et al. (ICLR 2022): each value's term is weighted
    by its predicted variance to the power beta, held constant in the gradient. Plain NLL
    (beta 0, the paper's loss) scales a target's mean gradient by 1/variance, so targets the
    network finds hard early on raise their variance and then learn slowly; beta 1 gives their
    means the gradient of squared error. With no known value at all the loss is 0 (still
    attached to the graph).
    """
    terms, known = masked_nll_terms(mean, log_var, targets)
    if beta:
        terms = terms * torch.exp(beta * log_var.detach())
    return terms.sum() / known.sum().clamp(min=1)
