"""Starting a run from a MIMIR module (`mimir train --init MODULE`) and freezing parts of a network.

The new network takes the module's backbone unchanged. Its final layer keeps, for every target
the new module shares with the old one, that target's two rows (mean, log-variance), re-scaled
from the module's standardisation to the new run's so that the copied prediction stays the same
in catalog units:

    mean'    = (mean * sd_old + mu_old - mu_new) / sd_new      (affine on the row's weights and bias)
    log_var' = log_var + 2 log(sd_old / sd_new)                 (a shift of the row's bias)

Rows of new targets keep the fresh initialisation of the seeded network. The module's
calibration factors are not carried over: they describe the old network's variances, and a
fine-tuned module is calibrated by its own cross-validation.

Modules are read through the public loader (`mimir.inference.modules.load_module`), so every
check of the module format applies; of a module with several member networks (format 2) the
first member is used (`first_member`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mimir.errors import MimirError
from mimir.network import MeanVarianceResNet, build_network
from mimir.runs.config import TrainConfig
from mimir.runs.standardization import Standardization

logger = logging.getLogger(__name__)

#: The parts of the network each `freeze` mode keeps fixed (attribute names of MeanVarianceResNet).
FROZEN_PARTS: dict[str, tuple[str, ...]] = {
    "none": (),
    "stem": ("conv1", "bn1"),
    "backbone": ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"),
}
#: Every parameter outside the final layer belongs to the backbone.
HEAD = "fc"


class InitModuleError(MimirError, ValueError):
    """A module given as `init` that cannot start this run (another architecture or input pool)."""


@dataclass(frozen=True)
class SourceNetwork:
    """The one network of a module that a run starts from, with the standardisation it learnt in."""

    name: str
    path: Path
    weights_sha256: str
    architecture: str
    input_pool: int
    targets: tuple[str, ...]
    mean: np.ndarray
    sd: np.ndarray
    trained: np.ndarray  # bool per target: the module had training values for it
    network: MeanVarianceResNet
    member: int = 0
    members: int = 1


@dataclass(frozen=True)
class InitRecord:
    """Where a run's initial weights came from: run.json's `init`, and through it the provenance of
    a module built from the run."""

    module: str
    path: str
    weights_sha256: str
    member: int
    members: int
    copied_targets: tuple[str, ...]  # head rows kept (re-scaled to the new standardisation)
    fresh_targets: tuple[str, ...]  # head rows initialised anew

    def to_json(self) -> dict[str, object]:
        record = asdict(self)
        record["copied_targets"] = list(self.copied_targets)
        record["fresh_targets"] = list(self.fresh_targets)
        return record


def is_module(init: str) -> bool:
    """Whether `init` names a MIMIR module (a folder or archive holding module.json)."""
    if init in ("scratch", "imagenet"):
        return False
    path = Path(init)
    if path.is_dir():
        return True  # a folder is never a weights file; the loader says what it lacks
    if not path.is_file():
        return False
    from mimir.inference.modules import ModuleFormatError, read_spec

    try:
        read_spec(path)
    except ModuleFormatError:
        return False  # a weights file (e.g. the published snapshot.pth.tar), not a module
    return True


def first_member(path: Path) -> SourceNetwork:
    """Member 0 of the module at `path`: the one place a multi-member module becomes one network."""
    from mimir.inference.modules import load_module

    loaded = load_module(path, "cpu", members=1)
    spec = loaded.spec
    mean, sd, untrained = spec.member_standardization(0)
    return SourceNetwork(
        name=spec.name,
        path=Path(path),
        weights_sha256=spec.weights_sha256,
        architecture=spec.architecture,
        input_pool=spec.input_pool,
        targets=spec.target_names,
        mean=np.asarray(mean, dtype=np.float64),
        sd=np.asarray(sd, dtype=np.float64),
        trained=~np.asarray(untrained, dtype=bool),
        network=loaded.network,
        members=spec.n_members,
    )


def check_compatible(source: SourceNetwork, config: TrainConfig) -> None:
    """The module's network must be the configuration's: same architecture, same input pooling."""
    if source.architecture != config.architecture:
        raise InitModuleError(
            f"module {source.name} ({source.path}) is a {source.architecture}, but the configuration trains a "
            f"{config.architecture}: set architecture = \"{source.architecture}\" to fine-tune from it"
        )
    if source.input_pool != config.input_pool:
        raise InitModuleError(
            f"module {source.name} ({source.path}) was trained with input_pool = {source.input_pool}, but the "
            f"configuration has {config.input_pool}: set input_pool = {source.input_pool} to fine-tune from it"
        )


def network_from_module(
    path: Path, config: TrainConfig, standardization: Standardization
) -> tuple[MeanVarianceResNet, InitRecord]:
    """A network for the run's targets, started from the module at `path` (see the module docstring).

    Call it under the run's seed: the rows of new targets keep the seeded fresh initialisation.
    """
    source = first_member(Path(path))
    check_compatible(source, config)
    network = build_network(config.architecture, len(standardization.targets), input_pool=config.input_pool)
    backbone = {key: value for key, value in source.network.state_dict().items() if not key.startswith(f"{HEAD}.")}
    missing, unexpected = network.load_state_dict(backbone, strict=False)
    if unexpected or any(not key.startswith(f"{HEAD}.") for key in missing):
        raise InitModuleError(f"module {source.name} ({path}): its backbone does not fit a {config.architecture}")
    copied = copy_head_rows(network, source, standardization)
    fresh = tuple(name for name in standardization.targets if name not in copied)
    logger.info(
        "initialised from module %s (%s): backbone copied; head rows kept for %s, new for %s",
        source.name, path, ", ".join(copied) or "no target", ", ".join(fresh) or "no target",
    )
    record = InitRecord(
        module=source.name, path=str(Path(path).resolve()), weights_sha256=source.weights_sha256,
        member=source.member, members=source.members, copied_targets=copied, fresh_targets=fresh,
    )
    return network, record


@torch.no_grad()
def copy_head_rows(network: MeanVarianceResNet, source: SourceNetwork, standardization: Standardization) -> tuple[str, ...]:
    """Copy the (mean, log-variance) rows of shared, trained targets into `network`'s final layer,
    re-scaled to `standardization`; return the targets copied."""
    old_weight, old_bias = source.network.fc.weight.detach().float(), source.network.fc.bias.detach().float()
    weight, bias = network.fc.weight, network.fc.bias
    copied = []
    for new_index, name in enumerate(standardization.targets):
        if name not in source.targets:
            continue
        old_index = source.targets.index(name)
        if not source.trained[old_index]:
            continue  # the module never learnt this target: its rows mean nothing
        scale = float(source.sd[old_index] / standardization.sd[new_index])
        offset = float((source.mean[old_index] - standardization.mean[new_index]) / standardization.sd[new_index])
        mean_row, log_var_row = 2 * old_index, 2 * old_index + 1
        weight[2 * new_index] = old_weight[mean_row] * scale
        bias[2 * new_index] = old_bias[mean_row] * scale + offset
        weight[2 * new_index + 1] = old_weight[log_var_row]
        bias[2 * new_index + 1] = old_bias[log_var_row] + 2.0 * math.log(scale)
        copied.append(name)
    return tuple(copied)


def frozen_modules(network: nn.Module, mode: str) -> list[nn.Module]:
    """The parts of `network` that `freeze = mode` keeps fixed."""
    if mode not in FROZEN_PARTS:
        raise ValueError(f"freeze mode {mode!r} unknown; choose from {', '.join(FROZEN_PARTS)}")
    return [getattr(network, name) for name in FROZEN_PARTS[mode]]


def freeze(network: nn.Module, mode: str) -> list[nn.Module]:
    """Stop gradients to the parts `mode` names; return them (their batch norms belong in eval mode)."""
    parts = frozen_modules(network, mode)
    for part in parts:
        for parameter in part.parameters():
            parameter.requires_grad_(False)
    return parts


def backbone_and_head(network: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters of the backbone and of the final layer (frozen ones are left out)."""
    backbone, head = [], []
    for name, parameter in network.named_parameters():
        if parameter.requires_grad:
            (head if name.startswith(f"{HEAD}.") else backbone).append(parameter)
    return backbone, head


def parts_in_eval_mode(parts: Sequence[nn.Module]) -> None:
    """Frozen parts normalise with, and keep, their batch-norm running statistics."""
    for part in parts:
        part.eval()
