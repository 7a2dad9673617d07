"""The input pipeline of prediction: cached .npy images to batches, loaded while the network runs.

Loading an image is cheap (a 196 kB file) but not free, and on a GPU the network is fast enough
for loading to matter: a background thread reads the next batches (and pins them in page-locked
memory for an asynchronous copy to a GPU) while the current batch is in the network. An image
that cannot be loaded (not a regular file, not a .npy file, a header that is not (3, 256, 256)
uint8, a size that does not match it: `mimir.imaging.cache.load_image` checks all of it before
reading the array) is reported with its batch and never stops the others.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mimir.imaging.cache import CacheError, load_image
from mimir.protocol import IMAGE_SHAPE

logger = logging.getLogger(__name__)

#: Batches read ahead of the one in the network: enough to hide a slow file read.
DEFAULT_PREFETCH = 2


@dataclass(frozen=True)
class CachedExam:
    """One exam to predict: its name and its cached image."""

    stem: str
    image: Path


@dataclass
class ImageBatch:
    """Loaded images of consecutive exams, plus the exams of that stretch that failed to load."""

    stems: list[str]
    images: torch.Tensor  # (n, 3, 256, 256) uint8, pinned when asked for
    failures: dict[str, str] = field(default_factory=dict)  # stem -> reason
    load_seconds: float = 0.0


def load_batch(exams: Sequence[CachedExam], *, pin_memory: bool = False) -> ImageBatch:
    """Read `exams` into one uint8 tensor; unreadable images go to `failures`, not to an error."""
    started = time.perf_counter()
    stems: list[str] = []
    images: list[np.ndarray] = []
    failures: dict[str, str] = {}
    for exam in exams:
        try:
            images.append(load_image(exam.image))
        except CacheError as error:
            failures[exam.stem] = str(error).replace(f"{exam.image}: ", "", 1)
        except OSError as error:
            failures[exam.stem] = f"{type(error).__name__}: {error}"
        else:
            stems.append(exam.stem)
    stacked = torch.from_numpy(np.stack(images)) if images else torch.empty((0, *IMAGE_SHAPE), dtype=torch.uint8)
    if pin_memory and len(stacked):
        stacked = stacked.pin_memory()
    return ImageBatch(stems, stacked, failures, time.perf_counter() - started)


def iter_batches(
    exams: Sequence[CachedExam],
    batch_size: int,
    *,
    pin_memory: bool = False,
    prefetch: int = DEFAULT_PREFETCH,
) -> Iterator[ImageBatch]:
    """Batches in the order of `exams`, read by a background thread up to `prefetch` ahead.

    numpy file reads and torch's pinning release the GIL, so the thread overlaps with the
    network's own (multi-threaded) compute. `prefetch` 0 reads in the calling thread.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    chunks = [exams[start : start + batch_size] for start in range(0, len(exams), batch_size)]
    if prefetch < 1:
        for chunk in chunks:
            yield load_batch(chunk, pin_memory=pin_memory)
        return
    yield from _prefetched(chunks, pin_memory=pin_memory, depth=prefetch)


_END = object()


def _prefetched(chunks: list[Sequence[CachedExam]], *, pin_memory: bool, depth: int) -> Iterator[ImageBatch]:
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                _put(ready, load_batch(chunk, pin_memory=pin_memory), stop)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, who re-raises it
            _put(ready, error, stop)
            return
        _put(ready, _END, stop)

    reader = threading.Thread(target=produce, name="mimir-image-reader", daemon=True)
    reader.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, ImageBatch)
            yield item
    finally:
        stop.set()
        while reader.is_alive():  # unblock a producer waiting on a full queue, then let it end
            try:
                ready.get_nowait()
            except queue.Empty:
                pass
            reader.join(timeout=0.05)


def _put(ready: queue.Queue[object], item: object, stop: threading.Event) -> None:
    """Put unless the consumer has gone (then the item is dropped and the thread ends)."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
