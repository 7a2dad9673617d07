"""Small modules with realistic outputs and body-like images, shared by the inference tests.

Test files load this file by path (pytest's importlib mode puts no test folder on sys.path);
`conftest.py` turns it into the `modules` and `cache` fixtures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mimir.inference.modules import ModuleSpec, Provenance, TargetSpec, save_module
from mimir.network import MeanVarianceResNet

STEMS = ("1234567_20201_2_0", "2345678_20201_2_0", "3456789_20201_3_0")
BODY_TARGETS = (
    TargetSpec("height", 50, "cm", "continuous", mean=170.0, sd=9.0, calibration=1.3, sd_p99=50.0),
    TargetSpec("weight", 21002, "kg", "continuous", mean=80.0, sd=14.0, calibration=0.7),
)
ORGAN_TARGETS = (TargetSpec("liverFat", 40061, "%", "continuous", mean=5.0, sd=4.0, calibration=1.1),)


def realistic_image(seed: int) -> np.ndarray:
    """A body-like blob: bright ellipse with smooth texture, dark background, like the cached images."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:256, :256]
    body = ((columns - 70 - rng.integers(-5, 5)) / 45.0) ** 2 + ((rows - 128) / 120.0) ** 2 < 1
    legs = ((columns - 190) / 30.0) ** 2 + ((rows - 140) / 110.0) ** 2 < 1
    texture = 40 * np.sin(rows / (7 + seed % 3)) * np.cos(columns / 11)
    image = np.zeros((3, 256, 256), dtype=np.float64)
    for channel, level in enumerate((170, 80, 50)):
        image[channel] = (body | legs) * (level + texture) + rng.normal(0, 6, (256, 256))
    return np.clip(image, 0, 255).astype(np.uint8)


def realistic_state(n_targets: int, images: np.ndarray, seed: int) -> dict[str, torch.Tensor]:
    """Random weights whose batch-norm statistics fit the images, so outputs are of order one."""
    torch.manual_seed(seed)
    network = MeanVarianceResNet("resnet18", n_targets, input_pool=4)
    for layer in network.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = None  # a plain average over the calibration passes
    network.train()
    with torch.no_grad():
        network(torch.from_numpy(images).float())
        network.fc.weight.mul_(0.3)
    return network.state_dict()


def make_module(path: Path, name: str, targets: tuple[TargetSpec, ...], seed: int = 0) -> Path:
    images = np.stack([realistic_image(seed + index) for index in range(4)])
    spec = ModuleSpec(
        name=name, architecture="resnet18", targets=targets,
        provenance=Provenance("training"), input_pool=4, log_var_range=(-10.0, 10.0),
    )
    return save_module(spec, realistic_state(len(targets), images, seed), path)
