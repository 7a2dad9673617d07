"""The one place that maps work over processes.

Batch stages (synthesis, compression, prediction) process thousands of independent items, and
one bad item must never stop the others: every item yields an Outcome, value or error.

Workers die with the process that started them: a scheduler's SIGKILL of the parent must not
leave them writing to the cache for minutes, and a parent that stops early (Ctrl-C, SIGTERM, an
error) terminates them instead of waiting for their items.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

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


class Executor(Protocol):
    """Somewhere other than this machine's process pool that runs items, one Outcome each
    (`mimir.cluster.DaskExecutor`: a Dask cluster)."""

    def map_outcomes(
        self, func: Callable[[T], R], items: Iterable[T], *, resources: Mapping[str, float] | None = None
    ) -> Iterator[Outcome[T, R]]: ...


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


#: prctl option asking Linux to send a signal when the parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1
#: How often a worker's watchdog checks that its parent is still the one that started it.
PARENT_CHECK_INTERVAL_S = 1.0
#: The exit status of a worker that finds itself orphaned (as if killed by SIGKILL).
ORPHANED_EXIT_STATUS = 128 + 9  # SIGKILL


def _set_parent_death_signal() -> None:
    """On Linux, have the kernel SIGKILL this process when its parent dies: at once, even while
    the worker is deep in numpy. Linux counts the death of the *thread* that started the process,
    so pools must live in the thread that made them (map_outcomes' do). Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        logger.debug("prctl(PR_SET_PDEATHSIG) failed (errno %d): the watchdog alone stops this worker", ctypes.get_errno())


def _orphaned(parent_pid: int) -> bool:
    """Re-parented (to init or a subreaper): the process that started this one is gone."""
    return os.getppid() != parent_pid


def _watch_parent(parent_pid: int, interval: float = PARENT_CHECK_INTERVAL_S) -> None:
    """Exit this process within `interval` of it being orphaned; the portable fallback of the
    death signal (started once the parent has been seen alive, so it looks only after a wait)."""
    while True:
        time.sleep(interval)
        if _orphaned(parent_pid):
            os._exit(ORPHANED_EXIT_STATUS)


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when `parent_pid` (the process that started it) ends.

    The death signal does it at once on Linux; a daemon thread checking the parent every
    PARENT_CHECK_INTERVAL_S does it everywhere. A parent that died before the signal was set
    would never send it, hence the check right after.
    """
    _set_parent_death_signal()
    if _orphaned(parent_pid):
        os._exit(ORPHANED_EXIT_STATUS)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="mimir-parent-watchdog", daemon=True).start()


def _init_worker(parent_pid: int) -> None:
    _single_threaded_worker()
    die_with_parent(parent_pid)


def run_one(func: Callable[[T], R], item: T) -> Outcome[T, R]:
    """`func(item)` as an Outcome: the one place an item's exception becomes its error, in a
    local worker and in a Dask task alike."""
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
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(os.getpid(),)
    )


def _terminate_workers(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now rather than wait for their items, when the caller stops early
    (Ctrl-C, SIGTERM, an error, or simply no more interest). Python 3.14 has
    `terminate_workers`; before it, the executor's process table is the only way in."""
    terminate = getattr(pool, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    processes = getattr(pool, "_processes", None) or {}
    for process in list(processes.values()):
        process.terminate()


def _close_pool(pool: ProcessPoolExecutor, *, completed: bool) -> None:
    """Shut a pool down: waiting for its workers after a complete run, terminating them otherwise.
    Either way every worker has exited on return, so whatever it was writing is stale."""
    if not completed:
        _terminate_workers(pool)
    pool.shutdown(wait=True, cancel_futures=True)


def _worker_died(item: T) -> Outcome[T, R]:
    logger.warning("a worker process died while running %r alone: reported as %s", item, WORKER_DIED)
    return Outcome(item=item, error=WORKER_DIED_MESSAGE, error_type=WORKER_DIED)


def _died(future: Future[Outcome[T, R]]) -> bool:
    return isinstance(future.exception(), BrokenProcessPool)


def map_outcomes(
    func: Callable[[T], R],
    items: Iterable[T],
    workers: int | Executor = 1,
    *,
    max_pending: int | None = None,
) -> Iterator[Outcome[T, R]]:
    """Apply `func` to every item, yielding outcomes as they complete (unordered).

    `workers` says where: a number of local processes, or an Executor (a Dask cluster, see
    `mimir.cluster.open_executor`), which then decides how items are retried and in flight.

    `workers <= 1` runs in this process (easy to debug, no start-up cost). Otherwise a pool of
    spawned processes is used; `func` must be picklable (a module-level function or a partial).
    At most `max_pending` items are in flight, so an iterator of thousands is not materialised.

    A worker that dies outright (OOM killer, segfault, os._exit) breaks the whole pool and fails
    every item in flight, innocent or not. Those items are rerun each alone in a process of its
    own, so only an item that kills its process even then gets a WorkerDied outcome; each item
    is rerun at most once, and the rest of the batch continues in a fresh pool.

    Workers die with this process (see `die_with_parent`). If the iteration ends early (an
    exception here or in the caller, or the generator closed), the workers are terminated and
    their items abandoned; on return every worker has exited. Close the generator when you stop
    (`contextlib.closing`) so that this happens at once, not when it is garbage collected.
    """
    if not isinstance(workers, int):
        yield from workers.map_outcomes(func, items)
        return
    if workers <= 1:
        for item in items:
            yield run_one(func, item)
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
    completed = False
    try:
        for item in items:
            try:
                in_flight[pool.submit(run_one, func, item)] = item
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
        completed = True
        return None
    finally:
        _close_pool(pool, completed=completed)


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
    completed = False
    try:
        while waiting or running:
            busy = {lane for lane, _ in running.values()}
            for lane in range(len(lanes)):
                if lane in busy or not waiting:
                    continue
                pool = lanes[lane] or _new_pool(1)
                lanes[lane] = pool
                item = waiting.popleft()
                running[pool.submit(run_one, func, item)] = (lane, item)
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
        completed = True
    finally:
        for pool in lanes:
            if pool is not None:
                _close_pool(pool, completed=completed)


#: How a part is written on the command line and in a predictions table's data dictionary.
PART_SYNTAX = "K/N (part K of N, 0-based: 0/4 ... 3/4)"


@dataclass(frozen=True)
class Part:
    """One of `count` parts of a batch split over machines or job-array tasks.

    An exam belongs to the part its id hashes to (`part_index`), not to a position in a list:
    adding exams to the inputs never moves an exam to another part, so parts written earlier stay
    valid and a rerun of part K finds its own cached exams again.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ShardError(f"part {self.index}/{self.count} does not exist: need N >= 1 and 0 <= K < N in {PART_SYNTAX}")

    @classmethod
    def parse(cls, text: str) -> Part:
        index, slash, count = text.strip().partition("/")
        if not slash or not index.strip().isdigit() or not count.strip().isdigit():
            raise ShardError(f"part {text!r}: expected {PART_SYNTAX}")
        return cls(int(index), int(count))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, key: str) -> bool:
        return part_index(key, self.count) == self.index

    def select(self, items: Iterable[T], key: Callable[[T], str]) -> list[T]:
        """The items of this part, in their order."""
        return [item for item in items if self.holds(key(item))]


def part_index(key: str, count: int) -> int:
    """The part (0 ... count-1) an exam id belongs to: a hash, the same on every machine and run."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count
