"""Compression in a background thread, each exam handed over as it finishes, so networks run meanwhile.

Prediction overlaps the stages when it pays (on a GPU, see `mimir.inference.predict`): the
networks take each exam as soon as its image is in the cache, while the worker processes compress
the others. `torch_threads` keeps torch to few threads while the workers hold the cores.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mimir.imaging.compress import CompressOptions, CompressSummary, ExamOutcome, compress_exams

if TYPE_CHECKING:
    from mimir.imaging.read import ExamInput


@dataclass
class _CompressionEnded:
    summary: CompressSummary | None
    error: BaseException | None


class _CompressionCancelled(Exception):
    """Raised inside the compression thread to stop it when prediction gave up."""


class BackgroundCompression:
    """`compress_exams` in a thread, its per-exam outcomes handed over as the exams finish.

    The thread mostly waits on the worker processes (with one worker it compresses here).
    Outcomes are only queued: rows, progress and batches are handled by the predicting thread.
    """

    def __init__(self, exams: Sequence[ExamInput], options: CompressOptions, workers: int) -> None:
        self._queue: queue.Queue[ExamOutcome | _CompressionEnded] = queue.Queue()
        self._cancelled = threading.Event()
        self._started = time.perf_counter()
        self.seconds = 0.0
        self.summary: CompressSummary | None = None
        self.running = True
        self._thread = threading.Thread(
            target=self._compress, args=(exams, options, workers), name="mimir-compress", daemon=True
        )
        self._thread.start()

    def _compress(self, exams: Sequence[ExamInput], options: CompressOptions, workers: int) -> None:
        """Timed here, where compression ends, not when the predicting thread next looks."""
        try:
            summary = compress_exams(exams, options, workers=workers, progress=self._hand_over)
        except BaseException as error:  # noqa: BLE001 - re-raised in the predicting thread
            self.seconds = time.perf_counter() - self._started
            self._queue.put(_CompressionEnded(None, error))
        else:
            self.seconds = time.perf_counter() - self._started
            self._queue.put(_CompressionEnded(summary, None))

    def _hand_over(self, outcome: ExamOutcome) -> None:
        if self._cancelled.is_set():
            raise _CompressionCancelled
        self._queue.put(outcome)

    def take(self, *, wait: bool) -> list[ExamOutcome]:
        """The outcomes that arrived; with `wait`, blocks until at least one or the end."""
        items: list[ExamOutcome | _CompressionEnded] = [self._queue.get()] if wait else []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        outcomes = []
        for item in items:
            if isinstance(item, _CompressionEnded):
                self.running = False
                if item.error is not None:
                    raise item.error
                self.summary = item.summary
            else:
                outcomes.append(item)
        return outcomes

    def stop(self) -> None:
        """Cancel what is left and wait for the thread. The cancellation lands when the next exam
        comes back from the workers; the exams still in them are then abandoned (the workers are
        terminated, their temporaries removed) and compressed again by the next run."""
        if self.running:
            self._cancelled.set()
        self._thread.join()


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[Callable[[], None]]:
    """Run torch on `count` threads (None: unchanged); yields a function that restores them early."""
    import torch

    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(min(count, previous))

    def restore() -> None:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)

    try:
        yield restore
    finally:
        restore()


__all__ = ["BackgroundCompression", "torch_threads"]
