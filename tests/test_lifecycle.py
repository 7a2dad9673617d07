"""The `mimir` command killed as a scheduler kills it: no worker left behind, a rerun completes.

`timeout` and batch schedulers send SIGTERM (then SIGKILL) to the command's own process, not to
its workers. Each test starts the real command with two compression workers, signals its main
process only once the first exam is cached, and checks that every process it started is gone
soon after (polled) and that a rerun leaves the cache byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mimir.cli import TERMINATED_EXIT, main

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process table in /proc")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


processes = _load("parallel_helpers", Path(__file__).with_name("parallel_helpers.py"))
synthetic_modules = _load("synthetic_modules", Path(__file__).parent / "inference" / "synthetic_modules.py")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def reference_cache(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The cache of an uninterrupted run."""
    cache = tmp_path_factory.mktemp("reference") / "cache"
    assert main(["-q", "compress", str(tiny_cohort), "--cache", str(cache), "--workers", "1"]) == 0
    return _tree(cache)


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("module")
    return synthetic_modules.make_module(folder / "body", "body", synthetic_modules.BODY_TARGETS, seed=1)


def _signal_mid_batch(command: list[str], cache: Path, signum: int) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    """Start `command`, send `signum` to its main process once an exam is cached while workers
    still run, wait for it; return how it ended and the processes it had started."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mimir", *command], start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(cache.glob("*.npy")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        started = processes.children(process.pid)
        assert process.poll() is None, "the signal must land mid-batch"
        os.kill(process.pid, signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        _kill_group(process.pid)
    return subprocess.CompletedProcess(command, process.returncode, "", stderr), started


def _kill_group(group: int) -> None:
    """Whatever the test left running (only if it failed), so that it does not outlive it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


def _check_ended(result: subprocess.CompletedProcess[str], signum: int, started: list[int], cache: Path) -> None:
    assert len(started) >= 2, f"the workers should be running when the signal lands: {started}"
    if signum == signal.SIGTERM:
        assert result.returncode == TERMINATED_EXIT, result.stderr
        assert result.stderr.strip().splitlines()[-1] == "terminated"
        assert "Traceback" not in result.stderr
        assert not [path for path in cache.rglob("*") if path.name.endswith(".part")]
    else:
        assert result.returncode == -signal.SIGKILL
    assert processes.survivors(started) == [], "processes outlived the command"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_compress_signalled_leaves_no_worker_and_resumes(signum, tiny_cohort, tmp_path, reference_cache):
    cache = tmp_path / "cache"
    command = ["-q", "compress", str(tiny_cohort), "--cache", str(cache), "--workers", "2"]
    result, started = _signal_mid_batch(command, cache, signum)
    _check_ended(result, signum, started, cache)
    assert main(command) == 0
    assert _tree(cache) == reference_cache


@pytest.mark.parametrize(
    "signum",
    [signal.SIGTERM, pytest.param(signal.SIGKILL, marks=pytest.mark.slow)],  # SIGKILL: the same as for compress
    ids=["SIGTERM", "SIGKILL"],
)
def test_predict_signalled_leaves_no_worker_and_resumes(signum, tiny_cohort, tmp_path, reference_cache, module):
    cache, out = tmp_path / "cache", tmp_path / "predictions.csv"
    command = [
        "-q", "predict", str(tiny_cohort), "--modules", str(module), "--out", str(out), "--cache", str(cache),
        "--workers", "2", "--device", "cpu",
    ]
    result, started = _signal_mid_batch(command, cache, signum)
    _check_ended(result, signum, started, cache)
    assert not out.exists()
    assert main(command) == 0
    assert _tree(cache) == reference_cache
    assert len(out.read_text().splitlines()) == 1 + len(list(tiny_cohort.glob("*.zip")))
