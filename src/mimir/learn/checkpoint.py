"""Weights in safetensors, training state in plain-tensor torch files, both written atomically.

A checkpoint is a pair `iter_NNNNNNN.safetensors` (network weights and buffers) and
`iter_NNNNNNN.state.pt` (iteration, optimizer, grad scaler, random generator states). The state
file is written second, so its presence marks a complete checkpoint; both load without
unpickling code (`weights_only=True`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mimir.atomic import atomic_path

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^iter_(\d+)\.state\.pt$")


@dataclass(frozen=True)
class Checkpoint:
    iteration: int
    weights: Path
    state: Path


def save_weights(model: nn.Module, path: Path, metadata: Mapping[str, str] | None = None) -> None:
    """All parameters and buffers as contiguous CPU tensors (channels-last layouts included)."""
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(Path(path)) as temporary:
        save_file(tensors, str(temporary), metadata=dict(metadata or {}))


def load_weights(model: nn.Module, path: Path) -> None:
    state = load_file(str(path))
    model.load_state_dict(state, strict=True)


def checkpoint_paths(folder: Path, iteration: int) -> Checkpoint:
    stem = Path(folder) / f"iter_{iteration:07d}"
    return Checkpoint(iteration, stem.with_suffix(".safetensors"), stem.with_suffix(".state.pt"))


def save_checkpoint(folder: Path, iteration: int, model: nn.Module, state: dict[str, object], keep: int) -> Checkpoint:
    """Write one checkpoint and delete all but the `keep` most recent ones."""
    checkpoint = checkpoint_paths(folder, iteration)
    save_weights(model, checkpoint.weights, {"iteration": str(iteration)})
    with atomic_path(checkpoint.state) as temporary:
        torch.save({"iteration": iteration, **state}, temporary)
    for old in list_checkpoints(folder)[:-keep]:
        old.state.unlink(missing_ok=True)
        old.weights.unlink(missing_ok=True)
    logger.debug("checkpoint at iteration %d written to %s", iteration, folder)
    return checkpoint


def list_checkpoints(folder: Path) -> list[Checkpoint]:
    """Complete checkpoints, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match:
            checkpoint = checkpoint_paths(folder, int(match.group(1)))
            if checkpoint.weights.is_file():
                found.append(checkpoint)
    return sorted(found, key=lambda c: c.iteration)


def latest_checkpoint(folder: Path) -> Checkpoint | None:
    checkpoints = list_checkpoints(folder)
    return checkpoints[-1] if checkpoints else None


def load_state(checkpoint: Checkpoint) -> dict[str, object]:
    return torch.load(checkpoint.state, map_location="cpu", weights_only=True)
