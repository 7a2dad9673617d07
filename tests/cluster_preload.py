"""Preloaded into the Dask workers of tests/test_cluster.py (`dask worker --preload FILE`): kills
the worker process on cue, as the OOM killer or a crash would, at a known point rather than at a
moment a test would have to guess.

Cues are files in the folder named by MIMIR_TEST_CUES, read when a task starts executing:

- `die-once`: the first worker to claim it (an atomic unlink) starts writing that task's exam to
  the cache and is SIGKILLed mid-write, leaving the temporary a killed writer leaves.
- `poison`: holds an exam stem; every worker that starts that exam is SIGKILLed.
- `poison-batch`: holds an exam stem; every worker that starts a prediction batch holding that
  exam is SIGKILLed (`mimir predict --scheduler`: a batch whose task kills its workers).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from mimir.atomic import atomic_path
from mimir.imaging.cache import image_path
from mimir.imaging.compress import exam_stem


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class DieOnCue(WorkerPlugin):
    """Looks at each task as it starts executing: `run_one(partial(compress_exam, options=...),
    exam)`, whose arguments name the exam and the cache, or `run_one(partial(predict_batch,
    job=...), exams)`, a prediction batch (a tuple of cached exams)."""

    def __init__(self, cues: Path) -> None:
        self.cues = cues
        self.worker: Any = None

    def setup(self, worker: Any) -> None:
        self.worker = worker

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "executing":
            return
        func, exam = self.worker.state.tasks[key].run_spec.args
        if isinstance(exam, tuple):  # a prediction batch
            poison = self.cues / "poison-batch"
            if poison.exists() and poison.read_text().strip() in {cached.stem for cached in exam}:
                _die()
            return
        stem = exam_stem(exam)
        poison = self.cues / "poison"
        if poison.exists() and poison.read_text().strip() == stem:
            _die()
        try:
            (self.cues / "die-once").unlink()
        except FileNotFoundError:
            return
        with atomic_path(image_path(func.keywords["options"].cache, stem)) as temporary:
            temporary.write_bytes(b"half an image")
            _die()


async def dask_setup(worker: Any) -> None:
    await worker.plugin_add(DieOnCue(Path(os.environ["MIMIR_TEST_CUES"])), name="mimir-test-die-on-cue")
