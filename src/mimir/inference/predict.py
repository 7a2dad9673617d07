"""Batch prediction: exams (zips or cached images) -> every module -> one calibrated table.

One row per exam (subject and visit), whatever happened to it: an exam that could not be
compressed or loaded keeps its row with NaN predictions and a `failure` saying at which stage
and why. Raw network output becomes values in target units only through
`mimir.inference.postprocess`, the single place for that.

Inputs are either raw exams (zips, DICOM folders, list files, as for `mimir compress`), which
are compressed into the cache first by the same code (so a rerun resumes from it), or images
already compressed: a cache folder (a folder holding .npy files and no zips) or single .npy
files, which are read where they lie.

Speed: raw exams are compressed by worker processes while the networks already run on the
exams compressed so far (full batches, in whatever order exams finish; the table keeps the input
order). The images of a batch are loaded once and run through every module; networks run under
`torch.inference_mode`, channels-last, with batch norm folded into the convolutions. TorchScript
freezing, `optimize_for_inference` and oneDNN tensors were measured (ResNet50, one thread, batch
16): within 3 % of this, inside the noise, so they are not used.

Precision: 'auto' is float32 on a CPU and float16 autocast on a GPU; bfloat16 (`precision=
"bfloat16"`, twice as fast on a CPU with AVX512-BF16) is opt-in. Both keep fewer mantissa bits
(bfloat16 8, float16 11), and how far a module's means drift cannot be told in advance: ResNet50s
with random weights and realistic images moved by up to 0.16 target sd in bfloat16 (float16:
0.02). So a module run in a reduced precision is verified on its first batch: its calibrated
means are computed in float32 as well, and when they differ by more than
REDUCED_PRECISION_TOLERANCE_SD (0.02 sd of the target's training values) the module runs in
float32 from then on, that batch included, with a warning. Within the tolerance it keeps the
reduced precision (and that batch's reduced outputs, so every exam gets the same arithmetic).
`PredictionResult.module_precisions` says what each module ran in and the deviation measured.
A float16 overflow fails the check on the first batch; on a later batch, that batch alone is
recomputed in float32.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mimir.atomic import atomic_path, atomic_write_text
from mimir.errors import MimirError
from mimir.imaging.cache import ExamId, image_path, read_qc
from mimir.imaging.compress import (
    CompressOptions,
    CompressSummary,
    ExamOutcome,
    InputError,
    compress_exams,
    discover_inputs,
    exam_stem,
)
from mimir.inference.modules import LoadedModule, ModuleSpec, load_module, read_spec
from mimir.inference.postprocess import postprocess, uncertain_flags
from mimir.network import denormals_flushed

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from mimir.imaging.read import ExamInput
    from mimir.inference.batching import CachedExam, ImageBatch

logger = logging.getLogger(__name__)

#: Two-sided 95 % normal quantile: interval = mean +- Z95 * sd.
Z95 = 1.959963984540054
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
OUTPUT_SUFFIXES = (".csv", ".parquet")
DEFAULT_BATCH_SIZE = {"cpu": 16, "cuda": 128}
ID_COLUMNS = ("eid", "instance", "exam")
STATUS_COLUMNS = ("qc_flag", "failure", "uncertain")
LONG_COLUMNS = (
    "eid", "instance", "exam", "module", "target", "unit", "mean", "sd", "low", "high", "uncertain", "qc_flag", "failure",
)
PARQUET_HINT = "pip install 'mimir-ukb[parquet]'"

#: Largest |reduced-precision mean - float32 mean| a module may show on its verification batch,
#: in target sds (the sd of the standardisation in its spec); beyond it the module runs in float32.
REDUCED_PRECISION_TOLERANCE_SD = 0.02

#: Torch threads while compression workers run beside the networks: one thread wastes no CPU
#: time waiting on the others when the workers keep every core busy (see `run_prediction`).
OVERLAP_TORCH_THREADS = 1

#: (stage, done, total): stage "compress" counts exams, "predict" counts exams through every module
#: (when the stages overlap, "predict" counts every row, exams that failed to compress included).
ProgressCallback = Callable[[str, int, int], None]


class PredictError(MimirError, ValueError):
    """Prediction cannot start: conflicting modules, no exams, a bad option."""


class TargetConflictError(PredictError):
    """Two modules predict the same target, so one table column would have two values."""


class OutputPathError(PredictError):
    """The output file cannot be written (checked before any work is done)."""


class ParquetUnavailableError(OutputPathError):
    """Parquet output asked for, but pyarrow is not installed."""


# options -----------------------------------------------------------------------------------------
def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'; an unusable explicit choice is an error."""
    import torch

    if device not in DEVICES and not device.startswith("cuda:"):
        raise PredictError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PredictError(f"device {device!r} asked for, but torch sees no usable CUDA GPU")
    return device


def cpu_supports_bfloat16() -> bool:
    """Native bfloat16 convolutions on this CPU (oneDNN with AVX512-BF16 or AMX).

    Without them torch emulates bfloat16, slower than float32: worth a warning when asked for.
    """
    import torch

    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
        probe = torch.ones(1, 2, 4, 4)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            result = torch.nn.functional.conv2d(probe, torch.ones(1, 2, 3, 3))
        return bool(torch.isfinite(result).all()) and result.dtype == torch.bfloat16
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: str) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None runs in float32."""
    import torch

    if precision not in PRECISIONS:
        raise PredictError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    on_cuda = device.startswith("cuda")
    if precision == "float32":
        return None
    if precision == "float16":
        if not on_cuda:
            raise PredictError("float16 is for CUDA GPUs; on a CPU use bfloat16 or float32")
        return torch.float16
    if precision == "bfloat16":
        if on_cuda and not torch.cuda.is_bf16_supported():
            raise PredictError("this GPU has no bfloat16 support; use --precision float16 or float32")
        if not on_cuda and not cpu_supports_bfloat16():
            logger.warning("this CPU has no native bfloat16: expect slower inference than float32")
        return torch.bfloat16
    return torch.float16 if on_cuda else None


def precision_name(dtype: torch.dtype | None) -> str:
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


# running one network -----------------------------------------------------------------------------
@dataclass
class ModuleRunner:
    """A loaded module placed for fast inference on its device, at one precision.

    Takes over the module's network: batch norm is folded into the convolutions (the same
    function to float32 rounding, a fifth less work on a CPU) and weights go channels-last.
    A reduced `autocast_dtype` is verified against float32 on the first batch (see the module
    docstring); `precision_used` and `verified_deviation_sd` say how that went.
    """

    module: LoadedModule
    autocast_dtype: torch.dtype | None = None
    tolerance_sd: float = REDUCED_PRECISION_TOLERANCE_SD
    #: Largest |mean - float32 mean| in target sds on the first batch; None until measured (or in float32).
    verified_deviation_sd: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        import torch

        self.network.eval()
        fold_batch_norm(self.network)
        self.network.to(memory_format=torch.channels_last)

    @property
    def spec(self) -> ModuleSpec:
        return self.module.spec

    @property
    def network(self) -> torch.nn.Module:
        return self.module.network

    @property
    def device(self) -> torch.device:
        return self.module.device

    @property
    def precision_used(self) -> str:
        """What the module runs in now: the requested precision, or float32 after a failed check."""
        return precision_name(self.autocast_dtype)

    def raw_output(self, network_input: torch.Tensor) -> torch.Tensor:
        """Float32 (N, 2T) output on the CPU for a float32 channels-last input on the device."""
        import torch

        if self.autocast_dtype is None:
            return self._forward(network_input, None).float().cpu()
        output = self._forward(network_input, self.autocast_dtype).float().cpu()
        if self.verified_deviation_sd is None and len(network_input):
            return self._verified(network_input, output)
        if self.autocast_dtype == torch.float16 and not torch.isfinite(output).all():
            logger.warning("module %s overflowed float16 on this batch; recomputed in float32", self.spec.name)
            output = self._forward(network_input, None).float().cpu()
        return output

    def _verified(self, network_input: torch.Tensor, reduced: torch.Tensor) -> torch.Tensor:
        """Compare the first batch with float32; keep the reduced precision only within tolerance."""
        reference = self._forward(network_input, None).float().cpu()
        deviation = mean_deviation_sd(reduced, reference, self.spec)
        self.verified_deviation_sd = deviation
        precision = self.precision_used
        if deviation <= self.tolerance_sd:
            logger.info(
                "module %s: %s means within %.4f target sd of float32 on %d exams; keeping %s",
                self.spec.name, precision, deviation, len(network_input), precision,
            )
            return reduced
        logger.warning(
            "module %s: %s means differ from float32 by up to %.4f target sd on its first %d exams "
            "(tolerance %g); running it in float32",
            self.spec.name, precision, deviation, len(network_input), self.tolerance_sd,
        )
        self.autocast_dtype = None
        return reference

    def _forward(self, network_input: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        import torch

        with torch.inference_mode(), torch.autocast(
            device_type=self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None
        ):
            return self.network(network_input)

    def predict(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated mean and sd (N, T) in target units for (N, 3, 256, 256) uint8 images."""
        return postprocess(self.raw_output(network_input(images, self.device)), self.spec)


def mean_deviation_sd(raw: Any, reference_raw: Any, spec: ModuleSpec) -> float:
    """Largest |calibrated mean - reference mean| over exams and targets, in target sds.

    Targets without training values (NaN in both) do not count; a mean that is finite in one
    output only (an overflow) is an infinite deviation.
    """
    means, _ = postprocess(raw, spec)
    reference, _ = postprocess(reference_raw, spec)
    target_sd = np.array([target.sd for target in spec.targets])
    with np.errstate(invalid="ignore"):
        deviation = np.abs(means - reference) / target_sd
    agree = (means == reference) | (np.isnan(means) & np.isnan(reference))
    deviation[agree] = 0.0
    deviation[np.isnan(deviation)] = np.inf
    return float(deviation.max(initial=0.0))


def fold_batch_norm(network: torch.nn.Module) -> int:
    """Fold every eval-mode batch norm into the convolution before it; returns how many.

    ResNets name the pairs conv1/bn1, conv2/bn2, conv3/bn3, and 0/1 inside `downsample`.
    """
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for parent in list(network.modules()):
        children = dict(parent.named_children())
        for name, child in children.items():
            partner = _batch_norm_partner(name)
            norm = children.get(partner) if partner else None
            if isinstance(child, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d) and not norm.training:
                setattr(parent, name, fuse_conv_bn_eval(child, norm))
                setattr(parent, partner, torch.nn.Identity())
                folded += 1
    return folded


def _batch_norm_partner(conv_name: str) -> str | None:
    if conv_name.startswith("conv"):
        return "bn" + conv_name.removeprefix("conv")
    if conv_name.isdigit():
        return str(int(conv_name) + 1)
    return None


def network_input(images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 images -> float32 channels-last on `device`; uint8 travels (4x less to copy)."""
    import torch

    from mimir.network import images_to_input

    on_device = images.to(device, non_blocking=images.is_pinned())
    return images_to_input(on_device).contiguous(memory_format=torch.channels_last)


# inputs ------------------------------------------------------------------------------------------
@dataclass
class ResolvedInputs:
    """Raw exams to compress first, and images already in a cache, in the order given."""

    raw: list[ExamInput] = field(default_factory=list)
    cached: list[CachedExam] = field(default_factory=list)


def is_cache_folder(path: Path) -> bool:
    """A folder of .npy images without zips: an image cache to read, not exams to compress."""
    return path.is_dir() and any(path.glob("*.npy")) and not any(path.glob("*.zip"))


def resolve_inputs(inputs: Sequence[str | Path]) -> ResolvedInputs:
    """Split inputs into raw exams and cached images; a path that does not exist is InputError."""
    from mimir.inference.batching import CachedExam

    resolved = ResolvedInputs()
    raw_paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        if path.is_file() and path.suffix == ".npy":
            resolved.cached.append(CachedExam(path.stem, path))
        elif is_cache_folder(path):
            resolved.cached.extend(CachedExam(image.stem, image) for image in sorted(path.glob("*.npy")))
        else:
            raw_paths.append(path)
    if raw_paths:
        resolved.raw = discover_inputs(raw_paths)
    return resolved


# the result --------------------------------------------------------------------------------------
@dataclass
class PredictionResult:
    """The table plus what a person running it wants to know: where the time went, what failed."""

    table: pd.DataFrame
    images: dict[str, Path]  # exam stem -> cached image (none from a temporary cache, which is gone)
    cache: Path | None
    device: str
    precision: str
    batch_size: int
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    compressed: int = 0
    reused: int = 0
    #: module name -> (precision it ran in, deviation from float32 in target sds on its verification
    #: batch; None when nothing was verified: float32 asked for, or no exam reached the module)
    module_precisions: dict[str, tuple[str, float | None]] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return int((self.table["failure"] != "").sum())


@dataclass
class _ExamRow:
    stem: str
    image: Path | None
    failure: str = ""
    qc_flag: str = ""


def predict(
    inputs: Sequence[str | Path],
    modules: Sequence[str | Path],
    *,
    cache: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    precision: str = "auto",
    progress: ProgressCallback | None = None,
    overlap: bool | None = None,
) -> pd.DataFrame:
    """The predictions table (one row per exam); see `run_prediction` for the details."""
    return run_prediction(
        inputs, modules, cache=cache, device=device, batch_size=batch_size, workers=workers,
        precision=precision, progress=progress, overlap=overlap,
    ).table


def run_prediction(
    inputs: Sequence[str | Path],
    modules: Sequence[str | Path],
    *,
    cache: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    precision: str = "auto",
    progress: ProgressCallback | None = None,
    overlap: bool | None = None,
) -> PredictionResult:
    """Compress what is not cached yet, run every module, return the table and a summary.

    Raw inputs are compressed into `cache` (a temporary folder, removed afterwards, when None:
    pass a folder to resume later). `workers` is the number of compression processes (default:
    all cores). Module, input and option errors are raised before any exam is compressed.

    With `overlap` the networks run on the exams already compressed while the workers compress
    the others; the table is the same, in the same row order. None (the default) overlaps on a
    GPU, where the networks then cost no CPU time, and not on a CPU, where compression and
    networks compete for the same cores: 100 exams, four ResNet50s, 2 idle cores took 0.652 s
    per exam overlapped and 0.625 s one stage after the other. When overlapping on a CPU, torch
    uses OVERLAP_TORCH_THREADS threads until compression ends (two threads on cores the workers
    keep busy cost more CPU per image than one).
    """
    from mimir.parallel import default_workers

    started = time.perf_counter()
    if not modules:
        raise PredictError("no modules given")
    resolved = resolve_inputs(inputs)
    if not resolved.raw and not resolved.cached:
        raise PredictError("no exams found in the inputs")
    specs = [read_spec(path) for path in modules]
    check_target_conflicts(specs, [str(path) for path in modules])
    device = resolve_device(device)
    autocast_dtype = resolve_precision(precision, device)
    size = batch_size or DEFAULT_BATCH_SIZE["cuda" if device.startswith("cuda") else "cpu"]
    if size < 1:
        raise PredictError(f"batch size must be at least 1, got {size}")
    timings: dict[str, float] = {}
    loading = time.perf_counter()
    runners = [ModuleRunner(load_module(path, device), autocast_dtype) for path in modules]
    timings["load modules"] = time.perf_counter() - loading

    n_workers = workers if workers is not None else default_workers()
    with (
        _cache_folder(cache, needed=bool(resolved.raw)) as cache_path,
        _cudnn_autotune(device),
        denormals_flushed(),
    ):
        rows = _initial_rows(resolved, cache_path)
        predictor = _BatchPredictor(rows, runners)
        if overlap is None:
            overlap = device.startswith("cuda")
        if resolved.raw and overlap:
            assert cache_path is not None
            compressed, reused, stage_timings = _compress_while_predicting(
                resolved, cache_path, n_workers, predictor, size, progress
            )
        else:
            compressed, reused, stage_timings = _compress_then_predict(
                resolved, cache_path, n_workers, predictor, size, progress
            )
        _mark_unreported(rows)
        _attach_qc_flags(rows)
        table = predictor.table()
    timings.update(stage_timings)
    timings.update(predictor.timings())
    timings["total"] = time.perf_counter() - started
    logger.info(
        "predicted %d exams with %d modules on %s (%s) in %.1f s",
        len(rows), len(runners), device, precision_name(autocast_dtype), timings["total"],
    )
    return PredictionResult(
        table=table,
        images={row.stem: row.image for row in rows if row.image is not None and row.image.is_file()},
        cache=Path(cache) if cache is not None else None,
        device=device,
        precision=precision_name(autocast_dtype),
        batch_size=size,
        timings=timings,
        compressed=compressed,
        reused=reused,
        module_precisions={runner.spec.name: (runner.precision_used, runner.verified_deviation_sd) for runner in runners},
    )


def check_target_conflicts(specs: Sequence[ModuleSpec], sources: Sequence[str]) -> None:
    """Every target must come from one module only."""
    owner: dict[str, str] = {}
    for spec, source in zip(specs, sources, strict=True):
        for name in spec.target_names:
            if name in owner:
                raise TargetConflictError(
                    f"target {name!r} is predicted by two modules ({owner[name]} and {source}); "
                    "run them in separate predictions"
                )
            owner[name] = source


@contextlib.contextmanager
def _cache_folder(cache: str | Path | None, *, needed: bool) -> Iterator[Path | None]:
    if cache is not None:
        yield Path(cache)
    elif not needed:
        yield None
    else:
        with tempfile.TemporaryDirectory(prefix="mimir-cache-") as temporary:
            logger.info("no cache folder given: compressing into %s (removed afterwards)", temporary)
            yield Path(temporary)


@contextlib.contextmanager
def _cudnn_autotune(device: str) -> Iterator[None]:
    """Let cuDNN pick the fastest convolution algorithms: every batch has the same image size."""
    if not device.startswith("cuda"):
        yield
        return
    import torch

    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def _initial_rows(resolved: ResolvedInputs, cache: Path | None) -> list[_ExamRow]:
    """One row per exam in input order (raw exams first), first occurrence of a name kept.

    Rows of raw exams have no image until their compression outcome arrives.
    """
    rows: dict[str, _ExamRow] = {}
    for source in resolved.raw:
        rows.setdefault(exam_stem(source), _ExamRow(exam_stem(source), None))
    for exam in resolved.cached:
        if exam.stem in rows:
            shown = rows[exam.stem].image or (image_path(cache, exam.stem) if cache is not None else exam.stem)
            logger.warning("exam %s given twice; using %s", exam.stem, shown)
            continue
        rows[exam.stem] = _ExamRow(exam.stem, exam.image)
    return list(rows.values())


def _mark_unreported(rows: Sequence[_ExamRow]) -> None:
    """A raw exam that compression never reported on still gets a reason in its row."""
    for row in rows:
        if row.image is None and not row.failure:
            row.failure = "compress: no outcome reported"


def _record_outcome(row: _ExamRow, outcome: ExamOutcome, cache: Path) -> Path | None:
    """Attach a compression outcome to its row; returns the image when it is ready for the networks."""
    if outcome.status == "failed":
        row.failure = f"{outcome.stage}: {outcome.reason}"
        return None
    row.image = image_path(cache, row.stem)
    return row.image


class _BatchPredictor:
    """Every module on batches of images, in whatever order they come, into arrays by table row."""

    def __init__(self, rows: Sequence[_ExamRow], runners: Sequence[ModuleRunner]) -> None:
        self.rows = rows
        self.runners = runners
        self.index = {row.stem: position for position, row in enumerate(rows)}
        self.means = [np.full((len(rows), len(runner.spec.targets)), np.nan) for runner in runners]
        self.sds = [np.full_like(mean, np.nan) for mean in self.means]
        self.flags = [np.zeros(mean.shape, dtype=bool) for mean in self.means]
        self.module_seconds = [0.0] * len(runners)
        self.load_seconds = 0.0
        self.settled = 0  # exams predicted or found unloadable

    @property
    def device(self) -> torch.device:
        return self.runners[0].device

    def run(self, batch: ImageBatch) -> None:
        self.load_seconds += batch.load_seconds
        for stem, reason in batch.failures.items():
            self.rows[self.index[stem]].failure = f"load: {reason}"
            logger.warning("%s could not be loaded: %s", stem, reason)
        if batch.stems:
            positions = np.array([self.index[stem] for stem in batch.stems])
            network_in = network_input(batch.images, self.device)
            for number, runner in enumerate(self.runners):
                started = time.perf_counter()
                raw = runner.raw_output(network_in)
                self.module_seconds[number] += time.perf_counter() - started
                mean, sd = postprocess(raw, runner.spec)
                self.means[number][positions], self.sds[number][positions] = mean, sd
                self.flags[number][positions] = uncertain_flags(sd, runner.spec)
        self.settled += len(batch.stems) + len(batch.failures)

    def timings(self) -> dict[str, float]:
        return {
            "load images": self.load_seconds,
            **{f"module {runner.spec.name}": seconds for runner, seconds in zip(self.runners, self.module_seconds, strict=True)},
        }

    def table(self) -> pd.DataFrame:
        return _build_table(self.rows, self.runners, self.means, self.sds, self.flags)


def _compress_then_predict(
    resolved: ResolvedInputs,
    cache: Path | None,
    workers: int,
    predictor: _BatchPredictor,
    batch_size: int,
    progress: ProgressCallback | None,
) -> tuple[int, int, dict[str, float]]:
    """One stage after the other: every raw exam compressed, then every image predicted."""
    from mimir.inference.batching import CachedExam, iter_batches

    timings: dict[str, float] = {}
    compressed = reused = 0
    if resolved.raw:
        assert cache is not None
        started = time.perf_counter()
        outcomes: list[ExamOutcome] = []

        def on_exam(outcome: ExamOutcome) -> None:
            outcomes.append(outcome)
            if progress is not None:
                progress("compress", len(outcomes), len(resolved.raw))

        summary = compress_exams(resolved.raw, CompressOptions(cache=cache), workers=workers, progress=on_exam)
        for outcome in outcomes:
            _record_outcome(predictor.rows[predictor.index[outcome.stem]], outcome, cache)
        compressed, reused = summary.done, summary.skipped
        timings["compress"] = time.perf_counter() - started
    todo = [CachedExam(row.stem, row.image) for row in predictor.rows if row.image is not None and not row.failure]
    started = time.perf_counter()
    for batch in iter_batches(todo, batch_size, pin_memory=predictor.device.type == "cuda"):
        predictor.run(batch)
        if progress is not None:
            progress("predict", predictor.settled, len(todo))
    timings["inference"] = time.perf_counter() - started
    return compressed, reused, timings


@dataclass
class _CompressionEnded:
    summary: CompressSummary | None
    error: BaseException | None


class _CompressionCancelled(Exception):
    """Raised inside the compression thread to stop it when prediction gave up."""


class _BackgroundCompression:
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
        """Cancel what is left (the exams in the workers finish first) and wait for the thread."""
        if self.running:
            self._cancelled.set()
        self._thread.join()


def _compress_while_predicting(
    resolved: ResolvedInputs,
    cache: Path,
    workers: int,
    predictor: _BatchPredictor,
    batch_size: int,
    progress: ProgressCallback | None,
) -> tuple[int, int, dict[str, float]]:
    """Compress raw exams in the background and predict each full batch of images as it is ready.

    Cached inputs go first; an exam joins a batch as soon as its image is in the cache, so the
    networks run while the workers compress. Batches stay full (the last one excepted) because
    a full batch is the cheapest per image. While compression runs, torch uses
    OVERLAP_TORCH_THREADS threads (the workers keep every core busy); afterwards all of them again.
    """
    from mimir.inference.batching import CachedExam, load_batch

    rows = predictor.rows
    ready = [CachedExam(row.stem, row.image) for row in rows if row.image is not None]
    pin_memory = predictor.device.type == "cuda"
    compress_done = compress_failed = 0
    waiting = inference = 0.0
    compression = _BackgroundCompression(resolved.raw, CompressOptions(cache=cache), workers)
    with _torch_threads(OVERLAP_TORCH_THREADS if predictor.device.type == "cpu" else None) as restore_threads:
        try:
            while compression.running or ready:
                must_wait = compression.running and len(ready) < batch_size
                waited = time.perf_counter()
                outcomes = compression.take(wait=must_wait) if compression.running else []
                waiting += time.perf_counter() - waited
                for outcome in outcomes:
                    compress_done += 1
                    image = _record_outcome(rows[predictor.index[outcome.stem]], outcome, cache)
                    if image is None:
                        compress_failed += 1
                    else:
                        ready.append(CachedExam(outcome.stem, image))
                    if progress is not None:
                        progress("compress", compress_done, len(resolved.raw))
                if not compression.running:
                    restore_threads()
                if len(ready) >= batch_size or (ready and not compression.running):
                    chunk, ready = ready[:batch_size], ready[batch_size:]
                    started = time.perf_counter()
                    predictor.run(load_batch(chunk, pin_memory=pin_memory))
                    inference += time.perf_counter() - started
                    if progress is not None:
                        progress("predict", predictor.settled + compress_failed, len(rows))
        finally:
            compression.stop()
    assert compression.summary is not None
    timings = {
        "compress (overlapped)": compression.seconds,
        "waiting for images": waiting,
        "inference": inference,
    }
    return compression.summary.done, compression.summary.skipped, timings


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[Callable[[], None]]:
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


def _attach_qc_flags(rows: Sequence[_ExamRow]) -> None:
    """The compression QC flag of each exam, from its cache's sidecars (or qc.csv)."""
    by_folder: dict[Path, dict[str, str]] = {}
    for row in rows:
        if row.image is None:
            continue
        folder = row.image.parent
        if folder not in by_folder:
            by_folder[folder] = _qc_flags(folder)
        row.qc_flag = by_folder[folder].get(row.stem, "")


def _qc_flags(folder: Path) -> dict[str, str]:
    records: list[dict[str, Any]] = list(read_qc(folder))
    table = folder / "qc.csv"
    if not records and table.is_file():
        with table.open(newline="") as handle:
            records = list(csv.DictReader(handle))
    return {str(record.get("subject", "")): _flag_text(record.get("flag")) for record in records}


def _flag_text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _build_table(
    rows: Sequence[_ExamRow],
    runners: Sequence[ModuleRunner],
    means: Sequence[np.ndarray],
    sds: Sequence[np.ndarray],
    flags: Sequence[np.ndarray],
) -> pd.DataFrame:
    import pandas as pd

    ids = [ExamId.from_stem(row.stem) for row in rows]
    columns: dict[str, Any] = {
        "eid": pd.array([exam.eid for exam in ids], dtype="Int64"),
        "instance": pd.array([exam.instance for exam in ids], dtype="Int64"),
        "exam": [row.stem for row in rows],
    }
    uncertain: list[list[str]] = [[] for _ in rows]
    targets = []
    for runner, mean, sd, flag in zip(runners, means, sds, flags, strict=True):
        for column, target in enumerate(runner.spec.targets):
            columns[target.name] = mean[:, column]
            columns[f"{target.name}_sd"] = sd[:, column]
            columns[f"{target.name}_low"] = mean[:, column] - Z95 * sd[:, column]
            columns[f"{target.name}_high"] = mean[:, column] + Z95 * sd[:, column]
            targets.append({"name": target.name, "module": runner.spec.name, "unit": target.unit, "kind": target.kind})
            for position in np.flatnonzero(flag[:, column]):
                uncertain[position].append(target.name)
    columns["qc_flag"] = [row.qc_flag for row in rows]
    columns["failure"] = [row.failure for row in rows]
    columns["uncertain"] = [";".join(names) for names in uncertain]
    table = pd.DataFrame(columns)
    table.attrs["targets"] = targets
    return table


# output ------------------------------------------------------------------------------------------
def check_output_path(out: str | Path) -> Path:
    """Fail before any work when `out` cannot be written: suffix, folder, permissions, pyarrow."""
    out = Path(out)
    if out.is_dir():
        raise OutputPathError(f"{out} is a folder; give a file name")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise OutputPathError(f"{out}: the output must end in {' or '.join(OUTPUT_SUFFIXES)}")
    folder = out.parent
    if not folder.is_dir():
        raise OutputPathError(f"{out}: the folder {folder} does not exist")
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=folder)
    except OSError as error:
        raise OutputPathError(f"{out}: cannot write in {folder} ({error.strerror or error})") from error
    os.close(handle)
    os.unlink(probe)
    if out.exists() and not os.access(out, os.W_OK):
        raise OutputPathError(f"{out} exists and is read-only")
    if out.suffix.lower() == ".parquet":
        require_parquet()
    return out


def require_parquet() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError as error:
        raise ParquetUnavailableError(f"Parquet output needs pyarrow: {PARQUET_HINT}") from error


def target_info(table: pd.DataFrame) -> list[dict[str, str]]:
    """Name, module and unit of each target column: from the table's attrs, else the catalog."""
    recorded = table.attrs.get("targets")
    if recorded:
        return [dict(item) for item in recorded]
    from mimir.targets.catalog import get_target

    info = []
    for column in table.columns:
        if not {f"{column}_sd", f"{column}_low", f"{column}_high"} <= set(table.columns):
            continue
        try:
            known = get_target(str(column))
            info.append({"name": str(column), "module": known.module, "unit": known.unit, "kind": known.kind})
        except KeyError:
            info.append({"name": str(column), "module": "", "unit": "", "kind": "continuous"})
    return info


def to_long(table: pd.DataFrame) -> pd.DataFrame:
    """One row per exam and target (the wide table melted, module and unit attached)."""
    import pandas as pd

    targets = target_info(table)
    n_rows, n_targets = len(table), len(targets)
    uncertain = [set(filter(None, str(text).split(";"))) for text in table["uncertain"].fillna("")]

    def repeated(column: str) -> np.ndarray:
        return np.repeat(table[column].to_numpy(), n_targets)

    def per_target(suffix: str) -> np.ndarray:
        if not targets:
            return np.zeros(0)
        return np.column_stack([table[f"{t['name']}{suffix}"].to_numpy(dtype=np.float64) for t in targets]).ravel()

    long = pd.DataFrame({
        "eid": pd.array(repeated("eid"), dtype="Int64"),
        "instance": pd.array(repeated("instance"), dtype="Int64"),
        "exam": repeated("exam"),
        "module": np.tile([t["module"] for t in targets], n_rows),
        "target": np.tile([t["name"] for t in targets], n_rows),
        "unit": np.tile([t["unit"] for t in targets], n_rows),
        "mean": per_target(""),
        "sd": per_target("_sd"),
        "low": per_target("_low"),
        "high": per_target("_high"),
        "uncertain": [t["name"] in flagged for flagged in uncertain for t in targets],
        "qc_flag": repeated("qc_flag"),
        "failure": repeated("failure"),
    })
    return long[list(LONG_COLUMNS)]


def write_predictions(table: pd.DataFrame, out: str | Path, *, long: bool = False) -> Path:
    """Write the table as CSV or Parquet (by suffix), atomically: all of it or nothing."""
    out = check_output_path(out)
    written = to_long(table) if long else table
    if out.suffix.lower() == ".parquet":
        with atomic_path(out) as temporary:
            written.to_parquet(temporary, index=False)
    else:
        atomic_write_text(out, written.to_csv(index=False, float_format="%.7g", lineterminator="\n"))
    logger.info("wrote %d rows to %s", len(written), out)
    return out


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A table written by `write_predictions` (wide), keeping exam names and flags as text."""
    import pandas as pd

    path = Path(path)
    if path.suffix.lower() == ".parquet":
        require_parquet()
        return pd.read_parquet(path)
    text_columns = {"exam": str, "qc_flag": str, "failure": str, "uncertain": str}
    table = pd.read_csv(path, dtype=text_columns)
    for column in text_columns:
        if column in table:
            table[column] = table[column].fillna("")
    return table


def subject_predictions(table: pd.DataFrame, exam: str) -> pd.DataFrame:
    """The rows `report.figure.subject_figure` lists for one exam: name, module, unit, mean, low, high."""
    import pandas as pd

    matches = table[table["exam"].astype(str) == exam]
    if matches.empty:
        raise PredictError(f"exam {exam!r} is not in the predictions table")
    row = matches.iloc[0]
    return pd.DataFrame([
        {
            "name": info["name"], "module": info["module"], "unit": info["unit"],
            "mean": row[info["name"]], "low": row[f"{info['name']}_low"], "high": row[f"{info['name']}_high"],
        }
        for info in target_info(table)
    ], columns=["name", "module", "unit", "mean", "low", "high"])


def default_cache_for(out: str | Path) -> Path:
    """The cache used when none is named: `{output stem}_cache` beside the output."""
    out = Path(out)
    return out.with_name(f"{out.stem}_cache")


__all__ = [
    "Z95",
    "ModuleRunner",
    "OutputPathError",
    "ParquetUnavailableError",
    "PredictError",
    "PredictionResult",
    "REDUCED_PRECISION_TOLERANCE_SD",
    "TargetConflictError",
    "check_output_path",
    "cpu_supports_bfloat16",
    "default_cache_for",
    "mean_deviation_sd",
    "predict",
    "read_predictions",
    "resolve_inputs",
    "run_prediction",
    "subject_predictions",
    "to_long",
    "write_predictions",
]
