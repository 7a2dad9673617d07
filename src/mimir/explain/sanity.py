"""Sanity checks of saliency maps (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018).

Model-randomisation: a map that barely changes when the network's weights are replaced by
random ones explains the image, not the model. `randomised` re-initialises a copy of a ResNet
from the top down (the cascading randomisation of the paper): the head first, then each residual
stage, finally the stem; `rank_correlation` compares two maps by Spearman's rank correlation, as
the paper does. Used by the tests and by benchmarks/explain_anatomy.py.

Anatomy: `mask_share` is the share of a map's saliency that falls inside a mask, to be compared
with the mask's share of the body area.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

#: Blocks of a torchvision ResNet from the top down; `randomised(network, depth)` resets the first `depth`.
CASCADE = ("fc", "layer4", "layer3", "layer2", "layer1", "conv1")
#: Modules reset together with a cascade block (the stem's batch norm goes with its convolution).
_COMPANIONS = {"conv1": ("bn1",)}


def randomised(network: torch.nn.Module, depth: int = len(CASCADE), seed: int = 0) -> torch.nn.Module:
    """A copy of `network` whose top `depth` blocks of CASCADE are re-initialised (eval mode).

    Re-initialised means each layer's own `reset_parameters` (PyTorch's default initialisation;
    batch norms get zero mean and unit variance again), under a fixed seed; the original is unchanged.
    """
    if not 0 <= depth <= len(CASCADE):
        raise ValueError(f"depth must be between 0 and {len(CASCADE)}, got {depth}")
    copied = copy.deepcopy(network)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in CASCADE[:depth]:
            for part in (name, *_COMPANIONS.get(name, ())):
                for module in getattr(copied, part).modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
                    if hasattr(module, "reset_running_stats"):
                        module.reset_running_stats()
    return copied.eval()


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman's rank correlation of two maps over their pixels (0 when either is constant)."""
    from scipy.stats import spearmanr

    first, second = np.ravel(first), np.ravel(second)
    if np.ptp(first) == 0 or np.ptp(second) == 0:
        return 0.0
    return float(spearmanr(first, second).statistic)


def mask_share(saliency_map: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's total saliency inside `mask` (NaN for a map of zeros)."""
    values = np.clip(np.asarray(saliency_map, dtype=np.float64), 0.0, None)
    total = values.sum()
    return float(values[np.asarray(mask, dtype=bool)].sum() / total) if total > 0 else float("nan")


__all__ = ["CASCADE", "mask_share", "randomised", "rank_correlation"]
