"""Functions for tests of mimir.parallel that spawned workers must import by name.

Tests put this folder on sys.path before starting a pool (pytest's importlib mode does not),
and spawned children inherit that sys.path, so both sides know the module as `parallel_helpers`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def square_or_die(item: int, killers: frozenset[int] = frozenset(), seconds: float = 0.0) -> int:
    """Square the item after `seconds`; a killer item ends its process as a crash would."""
    if item in killers:
        os._exit(1)
    time.sleep(seconds)
    return item * item


def dask_worker_name(item: int) -> str:
    """The name of the Dask worker that runs the item (set with `dask worker --name`)."""
    from distributed import get_worker

    return str(get_worker().name)


def quick_first_then_slow(item: int, seconds: float = 20.0) -> int:
    """Item 0 at once, every other after `seconds`: workers are busy when the first comes back."""
    if item:
        time.sleep(seconds)
    return item


def process_alive(pid: int) -> bool:
    """Running or sleeping: a zombie (dead, not yet reaped by its new parent) does not count."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def survivors(pids: list[int], deadline_s: float = 15.0) -> list[int]:
    """The pids still alive once all are gone or `deadline_s` has passed (polled, not slept)."""
    deadline = time.monotonic() + deadline_s
    alive = [pid for pid in pids if process_alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if process_alive(pid)]
    return alive
