"""The one place that maps work over processes.

Batch stages (synthesis, compression, prediction) process thousands of independent items, and
one bad item must never stop the others: every item yields an Outcome, value or error.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Outcome(Generic[T, R]):
    """What became of one item: its value, or the error that stopped it."""

    item: T
    value: R | None = None
    error: str | None = None
    error_type: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


#: Thread pools of numerical libraries, limited to one thread in every worker process.
SINGLE_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _single_threaded_worker() -> None:
    """Workers are already one per core: a BLAS pool of their own only competes for the cores,
    and OpenBLAS threads keep spinning after each call (measured: more CPU per exam than all of
    fusion). Runs before the task's modules import numpy; a variable the user set is kept."""
    for name in SINGLE_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")


def _run_one(func: Callable[[T], R], item: T) -> Outcome[T, R]:
    try:
        return Outcome(item=item, value=func(item))
    except Exception as error:  # noqa: BLE001 - the caller decides what a failure means
        logger.debug("item %r failed", item, exc_info=True)
        return Outcome(item=item, error=str(error) or repr(error), error_type=type(error).__name__)


def map_outcomes(
    func: Callable[[T], R],
    items: Iterable[T],
    workers: int = 1,
    *,
    max_pending: int | None = None,
) -> Iterator[Outcome[T, R]]:
    """Apply `func` to every item, yielding outcomes as they complete (unordered).

    `workers <= 1` runs in this process (easy to debug, no start-up cost). Otherwise a pool of
    spawned processes is used (spawn, not fork: forking a process that holds torch or OpenMP
    threads can deadlock). `func` must be picklable (a module-level function or a partial).
    At most `max_pending` items are in flight, so an iterator of thousands is not materialised.
    """
    if workers <= 1:
        for item in items:
            yield _run_one(func, item)
        return
    pending_limit = max_pending or workers * 4
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_single_threaded_worker) as pool:
        pending: set[Future[Outcome[T, R]]] = set()
        for item in items:
            pending.add(pool.submit(_run_one, func, item))
            if len(pending) >= pending_limit:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in done)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (future.result() for future in done)


def shard(items: Sequence[T], num_parts: int, part_id: int) -> list[T]:
    """Every `num_parts`-th item starting at `part_id`, to split a batch over machines.

    Items should be in a stable order (e.g. sorted by name) so that the parts, run on
    different machines, together cover every item exactly once.
    """
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ValueError(f"part {part_id} of {num_parts}: need num_parts >= 1 and 0 <= part_id < num_parts")
    return list(items[part_id::num_parts])
