"""The lint rules of pyproject.toml's [tool.ruff] hold over the whole tree.

Pyflakes catches unused and undefined names; bugbear catches zips that silently truncate, loop
variables captured late and mutable defaults. Ruff is a test dependency, so a missing ruff fails
here rather than skipping the check.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing_in_src_tests_and_benchmarks() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "src", "tests", "benchmarks"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_reports_a_zip_without_strict(tmp_path: Path) -> None:
    """The configuration is the one in force: a known finding is reported, not silently passed."""
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "example.py").write_text("pairs = list(zip([1], [2]))\n")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "example.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1 and "B905" in result.stdout, result.stdout + result.stderr
