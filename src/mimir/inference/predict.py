"""Batch prediction: exams (zips or cached images) -> every module -> one calibrated table.

One row per exam (subject and visit), whatever happened to it: an exam that could not be
compressed or loaded keeps its row with NaN predictions and a `failure` saying at which stage
and why. Raw network output becomes values in target units only through
`mimir.inference.postprocess`, the single place for that.

Inputs are either raw exams (zips, DICOM folders, list files, as for `mimir compress`), which
are compressed into the cache first by the same code (so a rerun resumes from it), or images
already compressed: a cache folder (a folder holding .npy files and no zips) or single .npy
files, which are read where they lie.

Speed: the images of a batch are loaded once (by a background thread, while the previous batch
is in the networks) and run through every module; networks run under `torch.inference_mode`,
channels-last, with batch norm folded into the convolutions.

Precision: 'auto' is float32 on a CPU and float16 autocast on a GPU. bfloat16 (twice as fast on
a CPU with AVX512-BF16) keeps only 8 bits of mantissa: on ResNet50s with random weights and
realistic images its means moved by up to 0.16 target sd from float32 (float16: 0.02), against
a goal of 0.02, so it is opt-in (`precision="bfloat16"`) until checked on trained modules
(benchmarks/predict_speed.py --modules ... reports the difference).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mimir.atomic import atomic_path, atomic_write_text
from mimir.imaging.cache import ExamId, image_path, read_qc
from mimir.imaging.compress import (
    CompressOptions,
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
    from mimir.inference.batching import CachedExam

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

#: (stage, done, total): stage "compress" counts exams, "predict" counts exams through every module.
ProgressCallback = Callable[[str, int, int], None]


class PredictError(ValueError):
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
    """

    module: LoadedModule
    autocast_dtype: torch.dtype | None = None

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

    def raw_output(self, network_input: torch.Tensor) -> torch.Tensor:
        """Float32 (N, 2T) output on the CPU for a float32 channels-last input on the device."""
        import torch

        output = self._forward(network_input, self.autocast_dtype)
        if self.autocast_dtype == torch.float16 and not torch.isfinite(output).all():
            logger.warning("module %s overflowed float16 on this batch; recomputed in float32", self.spec.name)
            output = self._forward(network_input, None)
        return output.float().cpu()

    def _forward(self, network_input: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        import torch

        with torch.inference_mode(), torch.autocast(
            device_type=self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None
        ):
            return self.network(network_input)

    def predict(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated mean and sd (N, T) in target units for (N, 3, 256, 256) uint8 images."""
        return postprocess(self.raw_output(network_input(images, self.device)), self.spec)


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
) -> pd.DataFrame:
    """The predictions table (one row per exam); see `run_prediction` for the details."""
    return run_prediction(
        inputs, modules, cache=cache, device=device, batch_size=batch_size, workers=workers,
        precision=precision, progress=progress,
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
) -> PredictionResult:
    """Compress what is not cached yet, run every module, return the table and a summary.

    Raw inputs are compressed into `cache` (a temporary folder, removed afterwards, when None:
    pass a folder to resume later). `workers` is the number of compression processes (default:
    all cores). Module, input and option errors are raised before any exam is compressed.
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

    with _cache_folder(cache, needed=bool(resolved.raw)) as cache_path, _cudnn_autotune(device):
        rows, compressed, reused, timings["compress"] = _compress_raw(
            resolved, cache_path, workers if workers is not None else default_workers(), progress
        )
        _attach_qc_flags(rows)
        with denormals_flushed():
            table, infer_timings = _predict_rows(rows, runners, size, progress)
    timings.update(infer_timings)
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


def _compress_raw(
    resolved: ResolvedInputs, cache: Path | None, workers: int, progress: ProgressCallback | None
) -> tuple[list[_ExamRow], int, int, float]:
    """Rows of every exam (raw ones compressed first), first occurrence of a name kept."""
    started = time.perf_counter()
    rows: dict[str, _ExamRow] = {}
    compressed = reused = 0
    if resolved.raw:
        assert cache is not None
        total = len(resolved.raw)
        counter = iter(range(1, total + 1))

        def on_exam(_: object) -> None:
            if progress is not None:
                progress("compress", next(counter), total)

        summary = compress_exams(resolved.raw, CompressOptions(cache=cache), workers=workers, progress=on_exam)
        failures = {outcome.stem: f"{outcome.stage}: {outcome.reason}" for outcome in summary.failures}
        compressed, reused = summary.done, summary.skipped
        for source in resolved.raw:
            stem = exam_stem(source)
            failure = failures.get(stem, "")
            rows.setdefault(stem, _ExamRow(stem, None if failure else image_path(cache, stem), failure))
    for exam in resolved.cached:
        if exam.stem in rows:
            logger.warning("exam %s given twice; using %s", exam.stem, rows[exam.stem].image)
            continue
        rows[exam.stem] = _ExamRow(exam.stem, exam.image)
    return list(rows.values()), compressed, reused, time.perf_counter() - started


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


def _predict_rows(
    rows: Sequence[_ExamRow],
    runners: Sequence[ModuleRunner],
    batch_size: int,
    progress: ProgressCallback | None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    from mimir.inference.batching import CachedExam, iter_batches

    index = {row.stem: position for position, row in enumerate(rows)}
    n_rows = len(rows)
    means = [np.full((n_rows, len(runner.spec.targets)), np.nan) for runner in runners]
    sds = [np.full_like(mean, np.nan) for mean in means]
    flags = [np.zeros(mean.shape, dtype=bool) for mean in means]
    timings = {"load images": 0.0, "inference": 0.0}
    module_seconds = [0.0] * len(runners)
    todo = [CachedExam(row.stem, row.image) for row in rows if row.image is not None and not row.failure]
    device = runners[0].device
    done = 0
    started = time.perf_counter()
    for batch in iter_batches(todo, batch_size, pin_memory=device.type == "cuda"):
        timings["load images"] += batch.load_seconds
        for stem, reason in batch.failures.items():
            rows[index[stem]].failure = f"load: {reason}"
            logger.warning("%s could not be loaded: %s", stem, reason)
        if batch.stems:
            positions = np.array([index[stem] for stem in batch.stems])
            network_in = network_input(batch.images, device)
            for number, runner in enumerate(runners):
                module_started = time.perf_counter()
                raw = runner.raw_output(network_in)
                module_seconds[number] += time.perf_counter() - module_started
                mean, sd = postprocess(raw, runner.spec)
                means[number][positions], sds[number][positions] = mean, sd
                flags[number][positions] = uncertain_flags(sd, runner.spec)
        done += len(batch.stems) + len(batch.failures)
        if progress is not None:
            progress("predict", done, len(todo))
    timings["inference"] = time.perf_counter() - started
    for runner, seconds in zip(runners, module_seconds, strict=True):
        timings[f"module {runner.spec.name}"] = seconds
    return _build_table(rows, runners, means, sds, flags), timings


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
    "ModuleRunner",
    "OutputPathError",
    "ParquetUnavailableError",
    "PredictError",
    "PredictionResult",
    "TargetConflictError",
    "Z95",
    "check_output_path",
    "default_cache_for",
    "predict",
    "read_predictions",
    "resolve_inputs",
    "run_prediction",
    "subject_predictions",
    "to_long",
    "write_predictions",
]
