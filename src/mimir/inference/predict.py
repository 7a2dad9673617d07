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
order). The images of a batch are loaded once and run through every module; each network runs
through a `mimir.inference.runner.ModuleRunner` (inference mode, channels-last, batch norm folded
into the convolutions). TorchScript freezing, `optimize_for_inference` and oneDNN tensors were
measured (ResNet50, one thread, batch 16): within 3 % of this, inside the noise, so they are not
used.

Precision: 'auto' is float32 on a CPU and float16 autocast on a GPU; bfloat16 (`precision=
"bfloat16"`, twice as fast on a CPU with AVX512-BF16) is opt-in (`mimir.devices`). A module run in
a reduced precision is checked against float32 on its first batch and falls back to float32 when
its means drift too far (`mimir.inference.runner`); `PredictionResult.module_precisions` says what
each module ran in and the deviation measured.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mimir.devices import cudnn_autotune, precision_name, resolve_device, resolve_precision
from mimir.errors import MimirError
from mimir.imaging.cache import ExamId, image_path, prepare_cache, qc_flags
from mimir.imaging.compress import (
    CompressOptions,
    ExamOutcome,
    InputError,
    compress_exams,
    discover_inputs,
    exam_stem,
)
from mimir.imaging.dixon_series import SeriesPatterns
from mimir.imaging.errors import ExamReadError
from mimir.imaging.exclusions import ExclusionList, read_exclusion_list
from mimir.inference.background_compression import BackgroundCompression, torch_threads
from mimir.inference.modules import ModuleSpec, load_module, members_to_run, read_ood, read_spec
from mimir.inference.postprocess import MemberMixture, combine_members
from mimir.inference.runner import ModuleRunner, network_input
from mimir.inference.table import ExamRow, build_table, check_column_naming, table_instance
from mimir.network import denormals_flushed
from mimir.parallel import Part

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from mimir.cluster import DaskExecutor
    from mimir.imaging.read import ExamInput
    from mimir.inference.batching import CachedExam, ImageBatch
    from mimir.inference.ood import OODDescription

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = {"cpu": 16, "cuda": 128}

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
        if path.suffix == ".npy" and not path.is_dir():  # a FIFO too: reported when loaded, never opened
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
    #: Exams (file stems) left out because the exclusion list names them; they have no row.
    excluded: list[str] = field(default_factory=list)
    #: module name -> (member networks run, member networks the module holds)
    module_members: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: On a Dask cluster: Dask worker name -> inference batches it ran; empty for a local run.
    batch_workers: dict[str, int] = field(default_factory=dict)
    #: On a Dask cluster: module loads by the workers (each worker process loads a module once).
    modules_loaded: int = 0

    @property
    def failed(self) -> int:
        return int((self.table["failure"] != "").sum())


@dataclass(frozen=True)
class PredictOptions:
    """How a prediction runs (the table does not depend on them, beyond the precision's rounding)."""

    #: Where raw exams are compressed (kept: a rerun resumes); None: a temporary folder, removed afterwards.
    cache: str | Path | None = None
    #: A `mimir.devices` name: auto, cpu, cuda or cuda:N.
    device: str = "auto"
    #: Images per network batch; None: DEFAULT_BATCH_SIZE for the device.
    batch_size: int | None = None
    #: Compression processes; None: all cores.
    workers: int | None = None
    #: One of `mimir.devices.PRECISIONS`; auto: float32 on a CPU, float16 on a GPU.
    precision: str = "auto"
    #: Compress and predict at once; None: on a GPU only (see `run_prediction`).
    overlap: bool | None = None
    #: An exclusion list (`mimir.imaging.exclusions`: eids, one per line, or a table with an eid
    #: column): the exams it names are neither compressed nor predicted and have no row in the
    #: table; `PredictionResult.excluded` lists them.
    exclude: str | Path | None = None
    #: Regular expressions searched in SeriesDescription naming the DICOM water and fat series
    #: where UK Biobank descriptions and ImageType do not (as `CompressOptions`).
    water_pattern: str | None = None
    fat_pattern: str | None = None
    #: Table column names: "mimir" (catalog names) or "ukb" (`p{field}_i{instance}`, as the
    #: Research Analysis Platform names fields; every exam must be of one instance).
    column_names: str = "mimir"
    #: Only the exams of this part (`mimir.parallel.Part`, by exam id), for job arrays; the parts'
    #: tables are joined by `mimir.inference.merge.merge_parts` (`mimir predict merge`).
    part: Part | None = None
    #: Use only the first this many member networks of each ensemble module (faster, a little
    #: less accurate); None: all. Modules with fewer members run all of theirs.
    members: int | None = None
    #: On a Dask cluster: run the networks only on workers that declare a GPU resource (`dask
    #: worker --resources GPU=1`) while every worker compresses; implied by a CUDA `device`.
    #: Ignored by a local run. See `mimir.inference.cluster_prediction`.
    gpu_workers: bool = False

    def __post_init__(self) -> None:
        SeriesPatterns(self.water_pattern, self.fat_pattern)  # a bad pattern is refused before any module loads
        if self.members is not None and (isinstance(self.members, bool) or not isinstance(self.members, int) or self.members < 1):
            raise PredictError(f"members must be a whole number of at least 1, got {self.members!r}")

    def compression(self, cache: Path) -> CompressOptions:
        """How raw exams are compressed into `cache` for this prediction."""
        return CompressOptions(cache=cache, water_pattern=self.water_pattern, fat_pattern=self.fat_pattern)


def predict(
    inputs: Sequence[str | Path],
    modules: Sequence[str | Path],
    options: PredictOptions | None = None,
    progress: ProgressCallback | None = None,
) -> pd.DataFrame:
    """The predictions table (one row per exam); see `run_prediction` for the details."""
    return run_prediction(inputs, modules, options, progress).table


def run_prediction(
    inputs: Sequence[str | Path],
    modules: Sequence[str | Path],
    options: PredictOptions | None = None,
    progress: ProgressCallback | None = None,
    *,
    executor: DaskExecutor | None = None,
) -> PredictionResult:
    """Compress what is not cached yet, run every module, return the table and a summary.

    Raw inputs are compressed into `options.cache` (pass a folder to resume later). Module,
    input and option errors are raised before any exam is compressed.

    With `options.overlap` the networks run on the exams already compressed while the workers
    compress the others; the table is the same, in the same row order. None (the default)
    overlaps on a GPU, where the networks then cost no CPU time, and not on a CPU, where
    compression and networks compete for the same cores: 100 exams, four ResNet50s, 2 idle cores
    took 0.652 s per exam overlapped and 0.625 s one stage after the other. When overlapping on a
    CPU, torch uses OVERLAP_TORCH_THREADS threads until compression ends (two threads on cores
    the workers keep busy cost more CPU per image than one).

    With an `executor` (`mimir.cluster.DaskExecutor`) the exams are compressed and predicted on
    its Dask cluster instead (`mimir.inference.cluster_prediction`); the table is the same.
    """
    options = options or PredictOptions()
    started = time.perf_counter()
    prepared = prepare_prediction(inputs, modules, options)
    if executor is not None:
        from mimir.inference.cluster_prediction import predict_on_cluster

        return predict_on_cluster(prepared, options, executor, progress, started=started)
    return _predict_here(prepared, options, progress, started=started)


@dataclass
class PreparedPrediction:
    """What a prediction starts from, checked before any exam is touched: the exams (this part,
    less the excluded), and the modules' specs."""

    resolved: ResolvedInputs
    modules: list[Path]
    specs: list[ModuleSpec]
    excluded: list[str]


def prepare_prediction(inputs: Sequence[str | Path], modules: Sequence[str | Path], options: PredictOptions) -> PreparedPrediction:
    """The exams and modules of a prediction; every input, module and option error is raised here."""
    if not modules:
        raise PredictError("no modules given")
    resolved = resolve_inputs(inputs)
    if not resolved.raw and not resolved.cached:
        raise PredictError("no exams found in the inputs")
    if options.part is not None:
        resolved = _part_of_inputs(resolved, options.part)
    excluded: list[str] = []
    if options.exclude is not None:
        resolved, excluded = _without_excluded(resolved, read_exclusion_list(options.exclude))
    specs = [read_spec(path) for path in modules]
    check_target_conflicts(specs, [str(path) for path in modules])
    if check_column_naming(options.column_names) == "ukb":
        table_instance([exam_stem(source) for source in resolved.raw] + [exam.stem for exam in resolved.cached])
    return PreparedPrediction(resolved, [Path(path) for path in modules], specs, excluded)


def batch_size_for(options: PredictOptions, device: str) -> int:
    """The images per network batch: the option, else DEFAULT_BATCH_SIZE of the device's kind."""
    size = options.batch_size or DEFAULT_BATCH_SIZE["cuda" if device.startswith("cuda") else "cpu"]
    if size < 1:
        raise PredictError(f"batch size must be at least 1, got {size}")
    return size


def _predict_here(
    prepared: PreparedPrediction, options: PredictOptions, progress: ProgressCallback | None, *, started: float
) -> PredictionResult:
    """Compression in local processes, the networks in this process."""
    from mimir.parallel import default_workers

    resolved, modules, specs, excluded = prepared.resolved, prepared.modules, prepared.specs, prepared.excluded
    device = resolve_device(options.device)
    autocast_dtype = resolve_precision(options.precision, device)
    size = batch_size_for(options, device)
    if resolved.raw and options.cache is not None:
        prepare_cache(Path(options.cache))  # a read-only cache fails now, not after the modules load
    timings: dict[str, float] = {}
    loading = time.perf_counter()
    runners = []
    for path, spec in zip(modules, specs, strict=True):
        members = members_to_run(spec, options.members)
        runners.append(ModuleRunner(load_module(path, device, members=members), autocast_dtype, members=members))
    ood = [read_ood(path, runner.spec) for path, runner in zip(modules, runners, strict=True)]
    timings["load modules"] = time.perf_counter() - loading

    n_workers = options.workers if options.workers is not None else default_workers()
    with (
        _cache_folder(options.cache, needed=bool(resolved.raw)) as cache_path,
        cudnn_autotune(device),
        denormals_flushed(),
    ):
        rows = _initial_rows(resolved, cache_path)
        predictor = _BatchPredictor(rows, [runner.spec for runner in runners], options.column_names, runners, ood)
        overlap = device.startswith("cuda") if options.overlap is None else options.overlap
        if resolved.raw and overlap:
            assert cache_path is not None
            compressed, reused, stage_timings = _compress_while_predicting(
                resolved, options.compression(cache_path), n_workers, predictor, size, progress
            )
        else:
            compressed, reused, stage_timings = _compress_then_predict(
                resolved, None if cache_path is None else options.compression(cache_path), n_workers, predictor, size, progress
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
        cache=Path(options.cache) if options.cache is not None else None,
        device=device,
        precision=precision_name(autocast_dtype),
        batch_size=size,
        timings=timings,
        compressed=compressed,
        reused=reused,
        module_precisions={runner.spec.name: (runner.precision_used, runner.verified_deviation_sd) for runner in runners},
        excluded=excluded,
        module_members={runner.spec.name: (runner.n_members, runner.spec.n_members) for runner in runners},
    )


def _part_of_inputs(resolved: ResolvedInputs, part: Part) -> ResolvedInputs:
    """The inputs of one part, by exam stem (the id a cache and the table use)."""
    selected = ResolvedInputs(part.select(resolved.raw, exam_stem), part.select(resolved.cached, lambda exam: exam.stem))
    found = len(resolved.raw) + len(resolved.cached)
    logger.info("part %s: %d of %d exams", part, len(selected.raw) + len(selected.cached), found)
    if not selected.raw and not selected.cached:
        raise PredictError(f"part {part} holds none of the {found} exams given (more parts than exams?)")
    return selected


def _without_excluded(resolved: ResolvedInputs, exclusions: ExclusionList) -> tuple[ResolvedInputs, list[str]]:
    """The inputs less the exams the list names (before any is compressed), and their stems."""
    raw = [source for source in resolved.raw if not exclusions.excludes_exam(exam_stem(source))]
    cached = [exam for exam in resolved.cached if not exclusions.excludes_exam(exam.stem)]
    excluded = [exam_stem(source) for source in resolved.raw if exclusions.excludes_exam(exam_stem(source))]
    excluded += [exam.stem for exam in resolved.cached if exclusions.excludes_exam(exam.stem)]
    if excluded:
        logger.info("left out %d exams on the exclusion list %s: %s", len(excluded), exclusions.source, ", ".join(excluded))
    if not raw and not cached:
        raise PredictError(f"every exam given ({len(excluded)}) is on the exclusion list {exclusions.source}; nothing to predict")
    return ResolvedInputs(raw, cached), excluded


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


def _initial_rows(resolved: ResolvedInputs, cache: Path | None) -> list[ExamRow]:
    """One row per exam in input order (raw exams first), first occurrence of a name kept.

    Rows of raw exams have no image until their compression outcome arrives. A cached image
    whose UK Biobank name gives another field than 20201 is refused as compression refuses such
    a zip (stage `field`): its row has no image, so it is never predicted as a body scan.
    """
    rows: dict[str, ExamRow] = {}
    for source in resolved.raw:
        rows.setdefault(exam_stem(source), ExamRow(exam_stem(source), None))
    for exam in resolved.cached:
        if exam.stem in rows:
            shown = rows[exam.stem].image or (image_path(cache, exam.stem) if cache is not None else exam.stem)
            logger.warning("exam %s given twice; using %s", exam.stem, shown)
            continue
        rows[exam.stem] = _cached_row(exam)
    return list(rows.values())


def _cached_row(exam: CachedExam) -> ExamRow:
    try:
        ExamId.from_stem(exam.stem).require_body_mri()
    except ExamReadError as error:
        logger.warning("%s is refused: %s", exam.image, error.reason)
        return ExamRow(exam.stem, None, failure=str(error))
    return ExamRow(exam.stem, exam.image)


def _mark_unreported(rows: Sequence[ExamRow]) -> None:
    """A raw exam that compression never reported on still gets a reason in its row."""
    for row in rows:
        if row.image is None and not row.failure:
            row.failure = "compress: no outcome reported"


def _record_outcome(row: ExamRow, outcome: ExamOutcome, cache: Path) -> Path | None:
    """Attach a compression outcome to its row; returns the image when it is ready for the networks."""
    if outcome.status == "failed":
        row.failure = f"{outcome.stage}: {outcome.reason}"
        return None
    row.image = image_path(cache, row.stem)
    return row.image


@dataclass
class BatchPrediction:
    """Every module's calibrated mixture on one batch of images, by exam (plain numpy: it comes
    back from a Dask worker as it is computed here), and the exams whose image did not load."""

    stems: list[str]
    failures: dict[str, str]  # stem -> why its image could not be loaded
    mixtures: list[MemberMixture]  # per module, rows in the order of `stems`
    load_seconds: float = 0.0
    module_seconds: list[float] = field(default_factory=list)
    #: per module: each exam's distance from its training images (None: no OOD description)
    ood_distances: list[np.ndarray | None] = field(default_factory=list)


def predict_images(
    batch: ImageBatch, runners: Sequence[ModuleRunner], ood: Sequence[OODDescription | None] | None = None
) -> BatchPrediction:
    """Run every module on a loaded batch, and score the exams against the modules' OOD
    descriptions (`ood`, per module): the one computation of a local and a cluster run."""
    mixtures: list[MemberMixture] = []
    seconds: list[float] = []
    distances: list[np.ndarray | None] = []
    if batch.stems:
        network_in = network_input(batch.images, runners[0].device)
        for number, runner in enumerate(runners):
            started = time.perf_counter()
            raws = runner.raw_outputs(network_in)
            mixtures.append(combine_members(raws, runner.spec))
            distances.append(_ood_distances(runner, ood[number] if ood else None, network_in))
            seconds.append(time.perf_counter() - started)
    return BatchPrediction(batch.stems, batch.failures, mixtures, batch.load_seconds, seconds, distances)


def _ood_distances(runner: ModuleRunner, description: OODDescription | None, network_in: torch.Tensor) -> np.ndarray | None:
    """The distance of each exam from the module's training images (a float32 pass of its
    network to the features its OOD description is made of); None without a description."""
    from mimir.inference.ood import extract_features

    if description is None:
        return None
    # member 0: the network the module's OOD description was made with
    return description.distances(extract_features(runner.networks[0], network_in, description.features))


class _BatchPredictor:
    """Every module on batches of images, in whatever order they come, into arrays by table row."""

    def __init__(
        self,
        rows: Sequence[ExamRow],
        specs: Sequence[ModuleSpec],
        column_names: str,
        runners: Sequence[ModuleRunner] = (),
        ood: Sequence[OODDescription | None] | None = None,
    ) -> None:
        """`runners` run batches here (`run`); without them the batches are predicted elsewhere
        (on a Dask cluster) and only `record`ed."""
        self.rows = rows
        self.specs = list(specs)
        self.runners = runners
        self.column_names = column_names
        #: Per module, its OOD description (None: the module has none) and each row's distance.
        self.ood = list(ood) if ood is not None else [None] * len(self.specs)
        self.ood_distances = [None if description is None else np.full(len(rows), np.nan) for description in self.ood]
        self.index = {row.stem: position for position, row in enumerate(rows)}
        self.means = [np.full((len(rows), len(spec.targets)), np.nan) for spec in self.specs]
        self.sds = [np.full_like(mean, np.nan) for mean in self.means]
        self.aleatoric = [np.full_like(mean, np.nan) for mean in self.means]
        self.epistemic = [np.full_like(mean, np.nan) for mean in self.means]
        self.module_seconds = [0.0] * len(self.specs)
        self.load_seconds = 0.0
        self.settled = 0  # exams predicted or found unloadable

    @property
    def device(self) -> torch.device:
        return self.runners[0].device

    def run(self, batch: ImageBatch) -> None:
        self.record(predict_images(batch, self.runners, self.ood))

    def record(self, prediction: BatchPrediction) -> None:
        """A batch's predictions (computed here or on a Dask worker) into the rows' arrays."""
        self.load_seconds += prediction.load_seconds
        for stem, reason in prediction.failures.items():
            self.rows[self.index[stem]].failure = f"load: {reason}"
            logger.warning("%s could not be loaded: %s", stem, reason)
        if prediction.stems:
            positions = np.array([self.index[stem] for stem in prediction.stems])
            for number, mixture in enumerate(prediction.mixtures):
                self.module_seconds[number] += prediction.module_seconds[number]
                self.means[number][positions], self.sds[number][positions] = mixture.mean, mixture.sd
                self.aleatoric[number][positions] = mixture.sd_aleatoric
                self.epistemic[number][positions] = mixture.sd_epistemic
                distances = prediction.ood_distances[number] if prediction.ood_distances else None
                if distances is not None and self.ood_distances[number] is not None:
                    self.ood_distances[number][positions] = distances
        self.settled += len(prediction.stems) + len(prediction.failures)

    def ood_columns(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(module, ood score, flagged) of each module that has an OOD description."""
        return [
            (spec.name, description.score(distances), description.flagged(distances))
            for spec, description, distances in zip(self.specs, self.ood, self.ood_distances, strict=True)
            if description is not None and distances is not None
        ]

    def timings(self) -> dict[str, float]:
        return {
            "load images": self.load_seconds,
            **{f"module {spec.name}": seconds for spec, seconds in zip(self.specs, self.module_seconds, strict=True)},
        }

    def table(self) -> pd.DataFrame:
        components = [
            (aleatoric, epistemic) if spec.n_members > 1 else None
            for spec, aleatoric, epistemic in zip(self.specs, self.aleatoric, self.epistemic, strict=True)
        ]
        return build_table(self.rows, self.specs, self.means, self.sds, column_names=self.column_names, components=components,
                           ood=self.ood_columns())


def _compress_then_predict(
    resolved: ResolvedInputs,
    compression: CompressOptions | None,
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
        assert compression is not None
        cache = compression.cache
        started = time.perf_counter()
        outcomes: list[ExamOutcome] = []

        def on_exam(outcome: ExamOutcome) -> None:
            outcomes.append(outcome)
            if progress is not None:
                progress("compress", len(outcomes), len(resolved.raw))

        summary = compress_exams(resolved.raw, compression, workers=workers, progress=on_exam)
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


def _compress_while_predicting(
    resolved: ResolvedInputs,
    options: CompressOptions,
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
    compress_done = 0
    settled_elsewhere = sum(1 for row in rows if row.failure)  # refused before compression, or failed in it
    waiting = inference = 0.0
    cache = options.cache
    compression = BackgroundCompression(resolved.raw, options, workers)
    with torch_threads(OVERLAP_TORCH_THREADS if predictor.device.type == "cpu" else None) as restore_threads:
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
                        settled_elsewhere += 1
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
                        progress("predict", predictor.settled + settled_elsewhere, len(rows))
        finally:
            compression.stop()
    assert compression.summary is not None
    timings = {
        "compress (overlapped)": compression.seconds,
        "waiting for images": waiting,
        "inference": inference,
    }
    return compression.summary.done, compression.summary.skipped, timings


def _attach_qc_flags(rows: Sequence[ExamRow]) -> None:
    """The compression QC flag of each exam, from its cache's sidecars (or qc.csv)."""
    by_folder: dict[Path, dict[str, str]] = {}
    for row in rows:
        if row.image is None:
            continue
        folder = row.image.parent
        if folder not in by_folder:
            by_folder[folder] = qc_flags(folder)
        row.qc_flag = by_folder[folder].get(row.stem, "")


__all__ = [
    "BatchPrediction",
    "PredictError",
    "PredictOptions",
    "PredictionResult",
    "TargetConflictError",
    "predict",
    "predict_images",
    "resolve_inputs",
    "run_prediction",
]
