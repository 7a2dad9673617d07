"""Fixtures of the inference tests: two saved modules and a cache of three body-like images."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_HELPERS = importlib.util.spec_from_file_location("synthetic_modules", Path(__file__).with_name("synthetic_modules.py"))
helpers = importlib.util.module_from_spec(_HELPERS)
_HELPERS.loader.exec_module(helpers)


@pytest.fixture(scope="session")
def modules(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("modules")
    return [
        helpers.make_module(folder / "body", "body", helpers.BODY_TARGETS, seed=1),
        helpers.make_module(folder / "organs", "organs", helpers.ORGAN_TARGETS, seed=2),
    ]


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    folder = tmp_path / "cache"
    folder.mkdir()
    for index, stem in enumerate(helpers.STEMS):
        np.save(folder / f"{stem}.npy", helpers.realistic_image(10 + index))
    return folder
