"""The parts of prediction on a Dask cluster that need no cluster: how batches are cut, what
inference tasks ask of a worker, and an inference task run in this process. Through a real
scheduler and workers: tests/test_cluster.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mimir.inference.cluster_prediction import (
    GPU_RESOURCES,
    InferenceJob,
    ModuleOnDisk,
    _Batches,
    inference_resources,
    predict_batch,
)
from mimir.inference.modules import module_digest
from mimir.inference.predict import PredictError, PredictOptions
from mimir.inference.table import ExamRow


def _rows(count: int) -> list[ExamRow]:
    return [ExamRow(f"100000{number}_20201_2_0", None) for number in range(count)]


def _settle(row: ExamRow, *, failed: bool = False) -> None:
    if failed:
        row.failure = "open: no such file or folder"
    else:
        row.image = Path(f"/cache/{row.stem}.npy")


def test_batches_are_the_local_runs_cut_in_input_order_as_exams_settle():
    rows = _rows(6)
    batches = _Batches(rows, size=2)
    _settle(rows[1])
    _settle(rows[2])
    assert batches.ready() == []  # the first exam is not compressed yet: nothing may overtake it
    _settle(rows[0], failed=True)
    (first,) = batches.ready()
    assert [exam.stem for exam in first] == [rows[1].stem, rows[2].stem]  # the failed exam is left out
    _settle(rows[3])
    _settle(rows[5])
    assert batches.ready() == []  # one exam waiting, row 4 not settled
    _settle(rows[4])
    (second,) = batches.ready()
    assert [exam.stem for exam in second] == [rows[3].stem, rows[4].stem]
    (last,) = batches.ready(final=True)
    assert [exam.stem for exam in last] == [rows[5].stem]
    assert batches.ready(final=True) == []


def test_inference_asks_for_a_gpu_with_gpu_workers_or_cuda_and_never_otherwise():
    assert inference_resources(PredictOptions(device="cpu")) is None
    assert inference_resources(PredictOptions(device="auto")) is None
    assert inference_resources(PredictOptions(device="cpu", gpu_workers=True)) == GPU_RESOURCES == {"GPU": 1}
    assert inference_resources(PredictOptions(device="cuda:1")) == {"GPU": 1}


def test_an_inference_task_in_this_process_predicts_and_keeps_its_modules(modules, cache):
    from mimir.inference.batching import CachedExam

    job = InferenceJob(tuple(ModuleOnDisk(path.absolute(), module_digest(path)) for path in modules), "cpu", "auto")
    exams = tuple(CachedExam(image.stem, image) for image in sorted(cache.glob("*.npy")))
    first = predict_batch(exams, job)
    again = predict_batch(exams, job)
    assert first.worker is None and first.device == "cpu" and first.precision == "float32"
    assert first.prediction.stems == [exam.stem for exam in exams] and not first.prediction.failures
    assert [mixture.mean.shape for mixture in first.prediction.mixtures] == [(3, 2), (3, 1)]
    assert again.modules_loaded == 0  # kept by this process since the first task (or an earlier test)
    for before, after in zip(first.prediction.mixtures, again.prediction.mixtures, strict=True):
        np.testing.assert_array_equal(before.mean, after.mean)


def test_a_module_changed_since_the_prediction_started_is_refused(modules, cache):
    from mimir.inference.batching import CachedExam

    job = InferenceJob((ModuleOnDisk(modules[0].absolute(), "0" * 64),), "cpu", "auto")
    with pytest.raises(PredictError, match="changed since the prediction started"):
        predict_batch((CachedExam("1234567_20201_2_0", cache / "1234567_20201_2_0.npy"),), job)
