"""Prediction on a Dask cluster (`mimir predict --scheduler ADDRESS | --cluster KIND`).

What runs where:

- compression: one task per raw exam (`mimir.imaging.compress.compress_exams` through the
  executor, exactly as `mimir compress --scheduler` runs it: atomic writes into the shared cache,
  already cached exams skipped, so a rerun resumes; qc.csv and failures.csv written at the end);
- inference: one task per batch of exams (`predict_batch`), submitted by this process as soon as
  the exams of the batch are compressed, ahead of compression still queued (a higher priority).
  The task reads the batch's images from the cache and runs every module; it returns numbers per
  exam (the calibrated mixtures, `BatchPrediction`), never networks. Each worker process loads a
  module once, on its first batch, and keeps it under the module's path and digest
  (`module_digest`) for the batches that follow;
- the table: this process, from the returned numbers, with the same code as a local run
  (`_BatchPredictor.record`, `build_table`): the same columns and rows, in the same order.

Batches are the local run's batches: the exams that reached the cache, in input order, cut every
`batch_size`, so each network sees the same images together as it would here.

GPU-shaped prediction: with `PredictOptions.gpu_workers` (`--gpu-workers`), or a CUDA device,
inference tasks ask for `resources={"GPU": 1}`, so they run only on workers started with
`dask worker --resources GPU=1`, one batch per GPU at a time, while compression tasks (no resource)
run on every worker: many CPU decoders feed each GPU.

Failures stay rows: an exam that fails compression (an input path a worker cannot see included)
has its stage and reason, as in a local run; a batch whose task cannot run (a module or device a
worker cannot load) has `predict: ...` in its exams' rows, and a batch whose task kept killing its
workers (Dask's allowed-failures) `worker: WorkerDied: ...`; the rest of the table is written.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mimir.devices import PRECISIONS, cudnn_autotune, is_device_name, precision_name, resolve_device, resolve_precision
from mimir.imaging.cache import prepare_cache
from mimir.imaging.compress import ExamOutcome, compress_exams
from mimir.inference.modules import check_representation, members_to_run, module_digest, read_ood, verify_module
from mimir.inference.predict import (
    BatchPrediction,
    PredictError,
    PredictionResult,
    PredictOptions,
    PreparedPrediction,
    ProgressCallback,
    ResolvedInputs,
    _attach_qc_flags,
    _BatchPredictor,
    _initial_rows,
    _mark_unreported,
    _record_outcome,
    batch_size_for,
    predict_images,
)
from mimir.parallel import WORKER_DIED, Outcome

if TYPE_CHECKING:
    import pandas as pd

    from mimir.cluster import DaskExecutor
    from mimir.inference.batching import CachedExam
    from mimir.inference.ood import OODDescription
    from mimir.inference.runner import ModuleRunner
    from mimir.inference.table import ExamRow

logger = logging.getLogger(__name__)

#: What an inference task asks of a worker in GPU-shaped prediction.
GPU_RESOURCES = {"GPU": 1}
#: Inference tasks run before compression tasks submitted earlier (Dask: higher runs first).
INFERENCE_PRIORITY = 1
#: Modules a worker process keeps loaded (a few predictions' worth), the oldest dropped first.
MAX_KEPT_MODULES = 8


# on the workers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModuleOnDisk:
    """A module as a worker finds it: its absolute path on the shared storage and its digest."""

    path: Path
    digest: str


@dataclass(frozen=True)
class InferenceJob:
    """What every inference task of one prediction shares (small: it travels with each task)."""

    modules: tuple[ModuleOnDisk, ...]
    device: str
    precision: str
    members: int | None = None


@dataclass
class WorkerBatch:
    """One inference task's result: the predictions and where and how they were made."""

    prediction: BatchPrediction
    worker: str | None  # the Dask worker's name
    device: str  # as the worker resolved it
    precision: str  # the precision asked for, as resolved on the worker's device
    #: per module: the precision it runs in on that worker and its verified deviation (see runner.py)
    module_precisions: list[tuple[str, float | None]] = field(default_factory=list)
    #: modules this task had to load (0 when the worker process held them from an earlier batch)
    modules_loaded: int = 0


_kept: OrderedDict[tuple[str, str, str, str, int | None], tuple[ModuleRunner, OODDescription | None]] = OrderedDict()
_kept_lock = threading.Lock()


def _runner(
    module: ModuleOnDisk, device: str, precision: str, members: int | None
) -> tuple[ModuleRunner, OODDescription | None, bool]:
    """The worker process's runner of `module` and its OOD description (loaded now when it holds
    none); True if loaded."""
    from mimir.inference.modules import load_module, read_ood, read_spec
    from mimir.inference.runner import ModuleRunner

    key = (str(module.path), module.digest, device, precision, members)
    with _kept_lock:  # a worker with several threads loads each module once
        kept = _kept.get(key)
        if kept is not None:
            _kept.move_to_end(key)
            return *kept, False
        if module_digest(module.path) != module.digest:
            raise PredictError(f"{module.path} changed since the prediction started (its module.json differs); run it again")
        count = members_to_run(read_spec(module.path), members)
        runner = ModuleRunner(load_module(module.path, device, members=count), resolve_precision(precision, device), members=count)
        description = read_ood(module.path, runner.spec)
        _kept[key] = (runner, description)
        while len(_kept) > MAX_KEPT_MODULES:
            _kept.popitem(last=False)
        return runner, description, True


def predict_batch(exams: tuple[CachedExam, ...], job: InferenceJob) -> WorkerBatch:
    """An inference task: the batch's cached images through every module, on this worker."""
    from mimir.cluster import current_worker_name
    from mimir.inference.batching import load_batch
    from mimir.network import denormals_flushed

    device = resolve_device(job.device)
    loaded = 0
    runners = []
    descriptions = []
    for module in job.modules:
        runner, description, was_loaded = _runner(module, device, job.precision, job.members)
        runners.append(runner)
        descriptions.append(description)
        loaded += was_loaded
    with cudnn_autotune(device), denormals_flushed():
        prediction = predict_images(load_batch(exams, pin_memory=False), runners, descriptions)
    return WorkerBatch(
        prediction=prediction,
        worker=current_worker_name(),
        device=device,
        precision=precision_name(resolve_precision(job.precision, device)),
        module_precisions=[(runner.precision_used, runner.verified_deviation_sd) for runner in runners],
        modules_loaded=loaded,
    )


# on this process ---------------------------------------------------------------------------------
def inference_resources(options: PredictOptions) -> dict[str, float] | None:
    """GPU=1 for every inference task when asked (`gpu_workers`) or when the networks run on
    CUDA (as cross-validation's folds do); nothing otherwise, and nothing for compression."""
    return dict(GPU_RESOURCES) if options.gpu_workers or options.device.startswith("cuda") else None


def _on_shared_storage(resolved: ResolvedInputs) -> ResolvedInputs:
    """Absolute paths: a worker runs in a folder of its own (relative paths would point there)."""
    from mimir.inference.batching import CachedExam

    raw = [
        dataclasses.replace(source, path=source.path.absolute(), fat_path=None if source.fat_path is None else source.fat_path.absolute())
        for source in resolved.raw
    ]
    return ResolvedInputs(raw, [CachedExam(exam.stem, exam.image.absolute()) for exam in resolved.cached])


class _Batches:
    """The local run's batches, cut as soon as the exams before them are settled: the exams with
    an image, in row order, `size` at a time (the last one shorter)."""

    def __init__(self, rows: Sequence[ExamRow], size: int) -> None:
        self.rows = rows
        self.size = size
        self.next_row = 0
        self.waiting: list[CachedExam] = []

    def ready(self, *, final: bool = False) -> list[tuple[CachedExam, ...]]:
        """Batches whose exams are all settled (compressed or failed); with `final`, the last
        partial batch too."""
        from mimir.inference.batching import CachedExam

        while self.next_row < len(self.rows):
            row = self.rows[self.next_row]
            if row.image is None and not row.failure:
                break  # not compressed yet: later exams wait, so batches keep the input order
            if row.image is not None and not row.failure:
                self.waiting.append(CachedExam(row.stem, row.image))
            self.next_row += 1
        cut = len(self.waiting) - len(self.waiting) % self.size
        if final:
            cut = len(self.waiting)
        batches = [tuple(self.waiting[start : start + self.size]) for start in range(0, cut, self.size)]
        self.waiting = self.waiting[cut:]
        return batches


@dataclass
class _Tally:
    """What the inference tasks reported, for the summary."""

    batches_by_worker: Counter[str] = field(default_factory=Counter)
    devices: dict[str, None] = field(default_factory=dict)
    precisions: dict[str, None] = field(default_factory=dict)
    module_precisions: list[dict[str, float | None]] = field(default_factory=list)
    modules_loaded: int = 0
    failed_batches: int = 0


def _check_options(options: PredictOptions) -> None:
    """What a local run checks by resolving the device, checked by name: the workers resolve it."""
    if not is_device_name(options.device):
        raise PredictError(f"unknown device {options.device!r}; choose auto, cpu, cuda or cuda:N")
    if options.precision not in PRECISIONS:
        raise PredictError(f"unknown precision {options.precision!r}; choose from {', '.join(PRECISIONS)}")


def _warn_without_gpu_workers(executor: DaskExecutor) -> None:
    workers = executor.client.scheduler_info(n_workers=-1).get("workers", {})  # every worker, not the first few
    if not any(info.get("resources", {}).get("GPU") for info in workers.values()):
        logger.warning(
            "no Dask worker declares a GPU yet: inference batches wait for one "
            "(start GPU workers with `dask worker --resources GPU=1`)"
        )


def predict_on_cluster(
    prepared: PreparedPrediction,
    options: PredictOptions,
    executor: DaskExecutor,
    progress: ProgressCallback | None = None,
    *,
    started: float | None = None,
) -> PredictionResult:
    """`mimir.inference.predict.run_prediction` on a Dask cluster (see the module docstring)."""
    started = time.perf_counter() if started is None else started
    resolved, cache = _shared_inputs(prepared, options)
    timings: dict[str, float] = {}
    checking = time.perf_counter()
    modules = _checked_modules(prepared)
    timings["check modules"] = time.perf_counter() - checking
    job = InferenceJob(tuple(modules), options.device, options.precision, options.members)
    resources = inference_resources(options)
    if resources:
        _warn_without_gpu_workers(executor)
    size = batch_size_for(options, "cuda" if resources else "cpu")

    rows = _initial_rows(resolved, cache)
    ood = [read_ood(path, spec) for path, spec in zip(prepared.modules, prepared.specs, strict=True)]
    predictor = _BatchPredictor(rows, prepared.specs, options.column_names, ood=ood)
    batches = _Batches(rows, size)
    tasks = executor.tasks()
    tally = _Tally(module_precisions=[{} for _ in modules])
    settled_elsewhere = sum(1 for row in rows if row.failure)

    def take(outcomes: Sequence[Outcome[tuple[CachedExam, ...], WorkerBatch]]) -> None:
        for outcome in outcomes:
            _record_batch(outcome, predictor, tally)
        if outcomes and progress is not None:
            progress("predict", predictor.settled + settled_elsewhere, len(rows))

    def submit(final: bool = False) -> None:
        for batch in batches.ready(final=final):
            tasks.submit(functools.partial(predict_batch, job=job), batch, resources=resources, priority=INFERENCE_PRIORITY)

    compressed = reused = 0
    try:
        submit()
        if resolved.raw:
            assert cache is not None
            compressing = time.perf_counter()
            done = 0

            def on_exam(outcome: ExamOutcome) -> None:
                nonlocal done, settled_elsewhere
                done += 1
                if _record_outcome(rows[predictor.index[outcome.stem]], outcome, cache) is None:
                    settled_elsewhere += 1
                if progress is not None:
                    progress("compress", done, len(resolved.raw))
                submit()
                take(tasks.finished())

            summary = compress_exams(resolved.raw, options.compression(cache), workers=executor, progress=on_exam)
            compressed, reused = summary.done, summary.skipped
            timings["compress (cluster)"] = time.perf_counter() - compressing
        _mark_unreported(rows)
        submit(final=True)
        waiting = time.perf_counter()
        take(list(tasks.as_completed()))
        timings["inference after compression"] = time.perf_counter() - waiting
    finally:
        tasks.cancel()
    _attach_qc_flags(rows)
    timings.update({f"{stage} (tasks, summed)": seconds for stage, seconds in predictor.timings().items()})
    timings["total"] = time.perf_counter() - started
    logger.info(
        "predicted %d exams with %d modules on the Dask cluster (%d batches: %s) in %.1f s",
        len(rows), len(modules), sum(tally.batches_by_worker.values()),
        ", ".join(f"{name} {count}" for name, count in sorted(tally.batches_by_worker.items())), timings["total"],
    )
    return _cluster_result(prepared, options, rows, predictor.table(), tally, cache=cache, batch_size=size,
                           timings=timings, compressed=compressed, reused=reused)


def _shared_inputs(prepared: PreparedPrediction, options: PredictOptions) -> tuple[ResolvedInputs, Path | None]:
    """The options checked by name, the inputs as every worker names them, and the cache (absolute,
    writable before any exam is sent) that raw exams are compressed into."""
    _check_options(options)
    resolved = _on_shared_storage(prepared.resolved)
    if resolved.raw and options.cache is None:
        raise PredictError("on a Dask cluster raw exams are compressed into a cache every worker sees: give a cache folder")
    cache = Path(options.cache).absolute() if options.cache is not None else None
    if resolved.raw and cache is not None:
        prepare_cache(cache)  # a read-only cache fails now, not once per exam on the workers
    return resolved, cache


def _cluster_result(
    prepared: PreparedPrediction, options: PredictOptions, rows: Sequence[ExamRow], table: pd.DataFrame,
    tally: _Tally, *, cache: Path | None, batch_size: int, timings: dict[str, float], compressed: int, reused: int,
) -> PredictionResult:
    """The table with what the workers reported: devices and precisions they ran, batches per
    worker, modules loaded."""
    return PredictionResult(
        table=table,
        images={row.stem: row.image for row in rows if row.image is not None and row.image.is_file()},
        cache=cache,
        batch_size=batch_size,
        timings=timings,
        compressed=compressed,
        reused=reused,
        excluded=prepared.excluded,
        device=", ".join(tally.devices) or options.device,
        precision=", ".join(tally.precisions) or options.precision,
        module_precisions={
            spec.name: _module_precision(seen, options.precision) for spec, seen in zip(prepared.specs, tally.module_precisions, strict=True)
        },
        module_members={spec.name: (members_to_run(spec, options.members), spec.n_members) for spec in prepared.specs},
        batch_workers=dict(tally.batches_by_worker),
        modules_loaded=tally.modules_loaded,
    )


def _checked_modules(prepared: PreparedPrediction) -> list[ModuleOnDisk]:
    """Every module verified here (checksums, shapes, representation) before any exam, since the
    workers load them; each named by its absolute path and the digest a worker checks again."""
    modules = []
    for path, spec in zip(prepared.modules, prepared.specs, strict=True):
        verify_module(path)
        check_representation(spec, path)
        modules.append(ModuleOnDisk(path.absolute(), module_digest(path)))
    return modules


def _record_batch(outcome: Outcome[tuple[CachedExam, ...], WorkerBatch], predictor: _BatchPredictor, tally: _Tally) -> None:
    """A batch's predictions into the table, or its exams' failure rows."""
    result = outcome.value
    if result is None:
        stage = "worker" if outcome.error_type == WORKER_DIED else "predict"
        reason = f"{stage}: {outcome.error_type}: {outcome.error}"
        for exam in outcome.item:
            predictor.rows[predictor.index[exam.stem]].failure = reason
        predictor.settled += len(outcome.item)
        tally.failed_batches += 1
        logger.warning("a batch of %d exams (%s ...) has no predictions: %s", len(outcome.item), outcome.item[0].stem, reason)
        return
    predictor.record(result.prediction)
    tally.batches_by_worker[result.worker or "?"] += 1
    tally.devices[result.device] = None
    tally.precisions[result.precision] = None
    tally.modules_loaded += result.modules_loaded
    for seen, (used, deviation) in zip(tally.module_precisions, result.module_precisions, strict=True):
        known = [value for value in (seen.get(used), deviation) if value is not None]
        seen[used] = max(known) if known else None


def _module_precision(seen: dict[str, float | None], requested: str) -> tuple[str, float | None]:
    """What a module ran in over every worker (several names when workers differed) and the
    largest deviation any of them measured."""
    if not seen:
        return requested, None
    deviations = [deviation for deviation in seen.values() if deviation is not None]
    return ", ".join(seen), max(deviations) if deviations else None


__all__ = [
    "GPU_RESOURCES",
    "InferenceJob",
    "ModuleOnDisk",
    "WorkerBatch",
    "inference_resources",
    "predict_batch",
    "predict_on_cluster",
]
