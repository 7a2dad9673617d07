"""Shared fixtures: a tiny synthetic cohort generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic exams, one of them on the common grid, with quirks on the others."""
    from mimir.synth import CohortConfig, generate_cohort

    out = tmp_path_factory.mktemp("tiny_cohort")
    generate_cohort(CohortConfig(n=4, seed=11), out)
    return out


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Tests are small: several threads only fight over the CI machine's two cores."""
    import torch

    torch.set_num_threads(1)
