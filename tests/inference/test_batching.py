"""Reading cached images ahead of the networks: order kept, unreadable images reported, no hang."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from mimir.inference.batching import CachedExam, iter_batches

_HELPERS = importlib.util.spec_from_file_location("synthetic_modules", Path(__file__).with_name("synthetic_modules.py"))
helpers = importlib.util.module_from_spec(_HELPERS)
_HELPERS.loader.exec_module(helpers)

STEMS = helpers.STEMS


def test_batches_keep_order_report_failures_and_stop_early(cache):
    np.save(cache / "0000001_20201_2_0.npy", np.zeros((2, 2), dtype=np.uint8))
    exams = [CachedExam(path.stem, path) for path in sorted(cache.glob("*.npy"))]
    batches = list(iter_batches(exams, batch_size=2))
    assert [stem for batch in batches for stem in batch.stems] == list(STEMS)
    assert list(batches[0].failures) == ["0000001_20201_2_0"]
    assert batches[0].images.shape == (1, 3, 256, 256) and batches[0].images.dtype == torch.uint8
    for _ in iter_batches(exams * 20, batch_size=1, prefetch=1):
        break  # the reader thread must end, not hang the test
