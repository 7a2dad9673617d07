"""Functions for tests of mimir.parallel that spawned workers must import by name.

Tests put this folder on sys.path before starting a pool (pytest's importlib mode does not),
and spawned children inherit that sys.path, so both sides know the module as `parallel_helpers`.
"""

from __future__ import annotations

import os
import time


def square_or_die(item: int, killers: frozenset[int] = frozenset(), seconds: float = 0.0) -> int:
    """Square the item after `seconds`; a killer item ends its process as a crash would."""
    if item in killers:
        os._exit(1)
    time.sleep(seconds)
    return item * item
