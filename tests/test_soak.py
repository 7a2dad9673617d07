"""Soak test (slow): compression killed again and again at random times still ends with the
cache an uninterrupted run writes, byte for byte, every exam present exactly once.

`python -m pytest -m slow tests/test_soak.py`; MIMIR_SOAK_EXAMS sets the cohort size (200 by
default: about 20 GB of synthetic zips and 10-15 minutes on two cores).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMS = int(os.environ.get("MIMIR_SOAK_EXAMS", "200"))
MAX_KILLS = 400


def _compress_command(cohort: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "mimir", "-q", "compress", str(cohort), "--cache", str(cache), "--workers", "2"]


def _cache_files(cache: Path) -> dict[str, bytes]:
    """Every image and QC sidecar, by path relative to the cache."""
    files = [*cache.glob("*.npy"), *(cache / "qc").glob("*.json")]
    return {str(path.relative_to(cache)): path.read_bytes() for path in files}


@pytest.mark.slow
def test_random_kills_leave_the_cache_an_uninterrupted_run_writes(tmp_path):
    from mimir.synth import CohortConfig, generate_cohort
    from mimir.synth.quirks import QUIRKS

    cohort = tmp_path / "cohort"
    generate_cohort(CohortConfig(n=EXAMS, seed=2026, quirks=QUIRKS), cohort, workers=2)
    reference = tmp_path / "reference"
    subprocess.run(_compress_command(cohort, reference), check=True, capture_output=True)

    cache = tmp_path / "soak"
    rng = np.random.default_rng(12)
    kills = 0
    while True:
        process = subprocess.Popen(
            _compress_command(cohort, cache), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            process.wait(timeout=float(rng.uniform(0.5, 6.0)))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            kills += 1
            assert kills < MAX_KILLS, "compression never finished between kills"
            continue
        assert process.returncode == 0
        break

    expected, found = _cache_files(reference), _cache_files(cache)
    assert sorted(found) == sorted(expected)
    assert [name for name in found if found[name] != expected[name]] == []
    assert len(list(cache.glob("*.npy"))) == EXAMS
    leftovers = [path.name for path in cache.rglob("*") if path.name.startswith(".") or path.name.endswith(".part")]
    assert leftovers == []
    assert kills >= 3, "the soak must interrupt compression several times"
