"""The one place that maps work over processes.

Batch stages (synthesis, compression, prediction) process thousands of independent items, and
one bad item must never stop the others: every item yields an Outcome, value or error.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Generic, TypeVar

from mimir.errors import MimirError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class ShardError(MimirError, ValueError):
    """A part of a batch split over machines that does not exist (part id outside the parts)."""


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


#: What an item gets when the process running it dies outright rather than raising.
WORKER_DIED = "WorkerDied"
WORKER_DIED_MESSAGE = "the worker process died (killed, out of memory, or crashed) while processing this item"


def _new_pool(workers: int) -> ProcessPoolExecutor:
    """Spawn, not fork: forking a process that holds torch or OpenMP threads can deadlock."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_single_threaded_worker)


def _worker_died(item: T) -> Outcome[T, R]:
    logger.warning("a worker process died while running %r alone: reported as %s", item, WORKER_DIED)
    return Outcome(item=item, error=WORKER_DIED_MESSAGE, error_type=WORKER_DIED)


def _died(future: Future[Outcome[T, R]]) -> bool:
    return isinstance(future.exception(), BrokenProcessPool)


def map_outcomes(
    func: Callable[[T], R],
    items: Iterable[T],
    workers: int = 1,
    *,
    max_pending: int | None = None,
) -> Iterator[Outcome[T, R]]:
    """Apply `func` to every item, yielding outcomes as they complete (unordered).

    `workers <= 1` runs in this process (easy to debug, no start-up cost). Otherwise a pool of
    spawned processes is used; `func` must be picklable (a module-level function or a partial).
    At most `max_pending` items are in flight, so an iterator of thousands is not materialised.

    A worker that dies outright (OOM killer, segfault, os._exit) breaks the whole pool and fails
    every item in flight, innocent or not. Those items are rerun each alone in a process of its
    own, so only an item that kills its process even then gets a WorkerDied outcome; each item
    is rerun at most once, and the rest of the batch continues in a fresh pool.
    """
    if workers <= 1:
        for item in items:
            yield _run_one(func, item)
        return
    pending_limit = max(1, max_pending or workers * 4)
    remaining: Iterator[T] = iter(items)
    while True:
        interrupted = yield from _map_until_broken(func, remaining, workers, pending_limit)
        if interrupted is None:
            return
        suspects, remaining = interrupted
        if len(suspects) == 1:  # it was running alone: no need to run it again to know
            yield _worker_died(suspects[0])
        elif suspects:
            yield from _run_each_alone(func, suspects, workers)


def _map_until_broken(
    func: Callable[[T], R], items: Iterator[T], workers: int, pending_limit: int
) -> Generator[Outcome[T, R], None, tuple[list[T], Iterator[T]] | None]:
    """Stream items through one pool; if the pool breaks, return the items it was running
    (suspects) and those not yet started, else None once every item is done."""
    pool = _new_pool(workers)
    in_flight: dict[Future[Outcome[T, R]], T] = {}
    try:
        for item in items:
            try:
                in_flight[pool.submit(_run_one, func, item)] = item
            except BrokenProcessPool:
                suspects = yield from _drain_broken(in_flight)
                return suspects, itertools.chain([item], items)
            if len(in_flight) >= pending_limit:
                broken = yield from _yield_completed(in_flight)
                if broken:
                    suspects = yield from _drain_broken(in_flight)
                    return suspects, items
        while in_flight:
            broken = yield from _yield_completed(in_flight)
            if broken:
                suspects = yield from _drain_broken(in_flight)
                return suspects, items
        return None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _yield_completed(in_flight: dict[Future[Outcome[T, R]], T]) -> Generator[Outcome[T, R], None, bool]:
    """Wait for at least one item, yield what completed normally; True if the pool broke."""
    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
    if any(_died(future) for future in done):
        return True
    for future in done:
        del in_flight[future]
        yield future.result()
    return False


def _drain_broken(in_flight: dict[Future[Outcome[T, R]], T]) -> Generator[Outcome[T, R], None, list[T]]:
    """Yield what finished before the pool broke; return the items it took down with it."""
    wait(in_flight)  # a broken pool fails every remaining future at once
    suspects = [item for future, item in in_flight.items() if _died(future)]
    for future in in_flight:
        if not _died(future):
            yield future.result()
    in_flight.clear()
    logger.warning(
        "a worker process died and took down its pool with %d items in flight: they are rerun each alone"
        " to find the one that killed it; the rest of the batch goes on in a fresh pool",
        len(suspects),
    )
    return suspects


def _run_each_alone(func: Callable[[T], R], suspects: list[T], workers: int) -> Iterator[Outcome[T, R]]:
    """Run each item in a one-process pool of its own, `workers` such lanes at a time, so a
    death is pinned on the one item that caused it and spares every other."""
    waiting = deque(suspects)
    lanes: list[ProcessPoolExecutor | None] = [None] * min(workers, len(suspects))
    running: dict[Future[Outcome[T, R]], tuple[int, T]] = {}
    try:
        while waiting or running:
            busy = {lane for lane, _ in running.values()}
            for lane in range(len(lanes)):
                if lane in busy or not waiting:
                    continue
                pool = lanes[lane] or _new_pool(1)
                lanes[lane] = pool
                item = waiting.popleft()
                running[pool.submit(_run_one, func, item)] = (lane, item)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                lane, item = running.pop(future)
                if not _died(future):
                    yield future.result()
                    continue
                broken_pool = lanes[lane]
                lanes[lane] = None
                if broken_pool is not None:
                    broken_pool.shutdown(wait=True)
                yield _worker_died(item)
    finally:
        for pool in lanes:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def shard(items: Sequence[T], num_parts: int, part_id: int) -> list[T]:
    """Every `num_parts`-th item starting at `part_id`, to split a batch over machines.

    Items should be in a stable order (e.g. sorted by name) so that the parts, run on
    different machines, together cover every item exactly once.
    """
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ShardError(f"part {part_id} of {num_parts}: need num_parts >= 1 and 0 <= part_id < num_parts")
    return list(items[part_id::num_parts])
