"""The mean-variance ResNet shared by training and inference.

The network is a torchvision ResNet whose final layer predicts, for each target, the mean and the
log-variance of a Gaussian on the standardised target, interleaved per target as
(mean_0, log_var_0, mean_1, log_var_1, ...) like the published MIMIR modules. Its parameter names
are exactly those of the torchvision ResNet, so published `state_dict`s load unchanged.

Input is the stored (3, 256, 256) uint8 image converted to float32 as is (0-255, no ImageNet
normalisation): the published networks were trained on that scale.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from mimir.architectures import LOG_VAR_RANGE
from mimir.errors import MimirError, PathNotFoundError

logger = logging.getLogger(__name__)

#: The architectures of `mimir.architectures.ARCHITECTURES`: name -> (constructor, ImageNet weights).
#: An explicit table, so a configuration string can never reach an arbitrary torchvision attribute.
RESNETS: dict[str, tuple[Callable[..., models.ResNet], models.WeightsEnum]] = {
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (models.resnet101, models.ResNet101_Weights.IMAGENET1K_V1),
    "resnet152": (models.resnet152, models.ResNet152_Weights.IMAGENET1K_V1),
    "resnext50_32x4d": (models.resnext50_32x4d, models.ResNeXt50_32X4D_Weights.IMAGENET1K_V1),
    "resnext101_32x8d": (models.resnext101_32x8d, models.ResNeXt101_32X8D_Weights.IMAGENET1K_V1),
    "wide_resnet50_2": (models.wide_resnet50_2, models.Wide_ResNet50_2_Weights.IMAGENET1K_V1),
    "wide_resnet101_2": (models.wide_resnet101_2, models.Wide_ResNet101_2_Weights.IMAGENET1K_V1),
}

_BACKBONE_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")


class PretrainedWeightsUnavailable(MimirError, RuntimeError):
    """ImageNet weights could not be fetched (typically: no network access)."""


class InitWeightsError(MimirError, ValueError):
    """Initial weights (a file given as `init`) that are not a state dict fitting the network."""


class MeanVarianceResNet(nn.Module):
    """A torchvision ResNet with a (mean, log-variance) head and optional input pooling.

    `input_pool` > 1 average-pools the input by that factor first: a cheap way to train on a CPU
    (the ResNet then sees a 128 x 128 or 64 x 64 image). It has no parameters, so weights trained
    with and without pooling share one layout.
    """

    def __init__(self, architecture: str, n_targets: int, input_pool: int = 1) -> None:
        super().__init__()
        if architecture not in RESNETS:
            raise ValueError(f"unknown architecture {architecture!r}; choose from {', '.join(RESNETS)}")
        if n_targets < 1:
            raise ValueError(f"a network needs at least one target, got {n_targets}")
        if input_pool < 1:
            raise ValueError(f"input_pool must be >= 1, got {input_pool}")
        constructor, _ = RESNETS[architecture]
        backbone = constructor(weights=None)
        for name in _BACKBONE_PARTS:
            self.add_module(name, getattr(backbone, name))
        self.fc = nn.Linear(backbone.fc.in_features, 2 * n_targets)
        self.architecture = architecture
        self.n_targets = n_targets
        self.input_pool = input_pool

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        if self.input_pool > 1:
            x = F.avg_pool2d(x, self.input_pool)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)

    def features(
        self, images: torch.Tensor, layers: tuple[str, ...] = ("layer4",), *, with_sd: bool = False, pool_input: bool = True
    ) -> torch.Tensor:
        """Per image, the spatial mean (and with `with_sd` the spatial sd) of each channel of the
        named residual stages, concatenated: ("layer4",) alone is the penultimate layer, what the
        final layer reads. `pool_input` False skips `input_pool`, so a network trained on pooled
        input sees the full-resolution image (descriptions for the OOD flag, mimir.inference.ood)."""
        x = images
        if pool_input and self.input_pool > 1:
            x = F.avg_pool2d(x, self.input_pool)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stages = ("layer1", "layer2", "layer3", "layer4")
        unknown = sorted(set(layers) - set(stages))
        if not layers or unknown:
            raise ValueError(f"features come from the stages {', '.join(stages)}; got {list(layers)}")
        parts = []
        for name in stages[: max(stages.index(layer) for layer in layers) + 1]:
            x = getattr(self, name)(x)
            if name in layers:
                parts.append(x.mean(dim=(2, 3)))
                if with_sd:
                    parts.append(x.std(dim=(2, 3)))
        return torch.cat(parts, dim=1)


def split_output(
    output: torch.Tensor, log_var_range: tuple[float, float] = LOG_VAR_RANGE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interleaved (batch, 2T) output -> mean (batch, T) and clamped log-variance (batch, T)."""
    if output.ndim != 2 or output.shape[1] % 2:
        raise ValueError(f"expected a (batch, 2*T) output, got shape {tuple(output.shape)}")
    pairs = output.reshape(output.shape[0], -1, 2)
    mean = pairs[..., 0]
    log_var = pairs[..., 1].clamp(log_var_range[0], log_var_range[1])
    return mean, log_var


def images_to_input(images: torch.Tensor) -> torch.Tensor:
    """Stored uint8 images -> float32 network input on the published 0-255 scale."""
    return images.to(torch.float32)


def build_network(architecture: str, n_targets: int, *, input_pool: int = 1, init: str = "scratch") -> MeanVarianceResNet:
    """A network initialised from scratch, from ImageNet, or from a weights file (`init` = PATH)."""
    network = MeanVarianceResNet(architecture, n_targets, input_pool)
    if init == "scratch":
        return network
    if init == "imagenet":
        state = imagenet_state_dict(architecture)
        source = f"ImageNet ({RESNETS[architecture][1]})"
    else:
        state = read_state_dict(Path(init))
        source = str(init)
    load_backbone_state(network, state, source=source)
    return network


def imagenet_state_dict(architecture: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights (from the torch hub cache, else downloaded)."""
    weights = RESNETS[architecture][1]
    try:
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True, map_location="cpu")
    except (OSError, RuntimeError) as error:
        raise PretrainedWeightsUnavailable(
            f"could not fetch the ImageNet weights {weights} from {weights.url} ({error}). "
            "This machine is probably offline: download that file elsewhere and pass it with "
            "`--init PATH` (or `init = \"PATH\"` in the config), place it in the torch hub cache "
            f"({torch.hub.get_dir()}/checkpoints), or train with `--init scratch`."
        ) from error


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a .safetensors file or a torch checkpoint, never unpickling code.

    A torch checkpoint may be a bare state dict or a dict holding one under `state_dict` (the
    published `snapshot.pth.tar`); a `module.` prefix left by DataParallel is removed.
    """
    if not path.is_file():
        raise PathNotFoundError(f"initial weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: object = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and "state_dict" in state:
            state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InitWeightsError(f"{path} does not hold a state dict of tensors")
    keys = list(state)
    if keys and all(key.startswith("module.") for key in keys):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return dict(state)


def load_backbone_state(network: MeanVarianceResNet, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load a torchvision ResNet state dict; the final layer is kept fresh when its shape differs."""
    own = network.state_dict()
    usable = dict(state)
    for key in ("fc.weight", "fc.bias"):
        if key in usable and usable[key].shape != own[key].shape:
            del usable[key]
    try:
        missing, unexpected = network.load_state_dict(usable, strict=False)
    except RuntimeError as error:
        raise InitWeightsError(f"{source} does not fit a {network.architecture}: {error}") from error
    backbone_missing = [key for key in missing if not key.startswith("fc.")]
    if backbone_missing or unexpected:
        raise InitWeightsError(
            f"{source} is not a {network.architecture} state dict: "
            f"missing {backbone_missing[:5]}, unexpected {list(unexpected)[:5]}"
        )
    if missing:
        logger.info("initialised from %s; final layer (%d outputs) starts fresh", source, own["fc.bias"].shape[0])
    else:
        logger.info("initialised from %s, final layer included", source)


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """Treat denormal floats as zero while the block runs (then restore the default).

    Tiny values (below ~1e-38) appear in Adam's moment estimates and in gradients, and x86
    CPUs process them up to ten times slower; measured here, a ResNet18 training step ran
    6x faster with them flushed. Values that small change no result that matters.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
