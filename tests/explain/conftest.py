"""A module trained briefly on drawn images whose target is the size of one organ, shared per session.

Real training (`mimir.learn.train.train`, then `build_module`) on a cache of body-like images:
a bright round organ at a fixed place in the coronal view, its radius (so its area, the target)
drawn per exam. Tiny on purpose (ResNet18 on 64 x 64 pooled input, a few iterations): the
saliency tests need a module whose weights came from training, not an accurate one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

N_IMAGES = 12
ORGAN_CENTRE = (90, 55)  # row, column in the coronal view
TARGET = "liverVolume"


@dataclass(frozen=True)
class TrainedModule:
    module: Path
    cache: Path
    stems: list[str]


def organ_image(rng: np.random.Generator, radius: float) -> np.ndarray:
    """Water, fat and fat fraction of a body ellipse with a water-bright round organ."""
    rows, columns = np.mgrid[:256, :256]
    coronal = ((columns - 76) / 60.0) ** 2 + ((rows - 128) / 120.0) ** 2 < 1
    sagittal = ((columns - 205) / 40.0) ** 2 + ((rows - 128) / 115.0) ** 2 < 1
    body = coronal | sagittal
    organ = (rows - ORGAN_CENTRE[0]) ** 2 + (columns - ORGAN_CENTRE[1]) ** 2 < radius**2
    image = np.stack([body * 120.0 + organ * 100.0, body * 60.0 - organ * 40.0, body * 30.0])
    return np.clip(image + rng.normal(0.0, 5.0, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedModule:
    import pandas as pd

    from mimir.inference.module_build import build_module
    from mimir.learn.train import train
    from mimir.runs.config import TrainConfig

    root = tmp_path_factory.mktemp("explain")
    cache = root / "cache"
    cache.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for index in range(N_IMAGES):
        radius = rng.uniform(8.0, 30.0)
        eid = 2_000_000 + index
        np.save(cache / f"{eid}_20201_2_0.npy", organ_image(rng, radius))
        rows.append({"eid": eid, "instance": 2, TARGET: np.pi * radius**2 / 1000.0})
    config = TrainConfig(
        architecture="resnet18", init="scratch", input_pool=4, autocast="float32", batch_size=4,
        iterations=12, learning_rate=1e-3, lr_milestones=[12], checkpoint_every=12, log_every=12,
        eval_batch_size=4, deterministic=True, seed=3, modules={"organ": [TARGET]},
    )
    train(config, cache, pd.DataFrame(rows), "organ", root / "run", device="cpu")
    module = build_module(root / "run", None, root / "module")
    return TrainedModule(module, cache, sorted(path.stem for path in cache.glob("*.npy")))


@pytest.fixture(scope="session")
def draw_organ_image():
    """`organ_image`, for test files that build caches of their own (conftest is no importable module)."""
    return organ_image
