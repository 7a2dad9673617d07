"""Many exams to the image cache in parallel, with qc.csv and failures.csv.

Bad input never stops the batch and never passes silently: each exam either lands in the
cache (with a QC row) or gets one row in failures.csv saying at which stage and why.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from mimir.atomic import atomic_write_text, remove_stale_temporaries, reported_write
from mimir.errors import MimirError
from mimir.imaging.cache import (
    ExamId,
    entry_problem,
    exam_identity,
    failures_path,
    image_path,
    prepare_cache,
    qc_folder,
    qc_table_path,
    read_qc,
    write_image,
    write_qc,
)
from mimir.imaging.dixon_series import SeriesPatterns
from mimir.imaging.errors import ExamReadError
from mimir.imaging.read import ExamInput
from mimir.parallel import Executor, Outcome, map_outcomes

logger = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_LIST_SUFFIXES = (".txt", ".lst", ".list", ".csv")


class InputError(MimirError, ValueError):
    """An input path that does not exist or cannot be understood (misuse, not a bad exam)."""


@dataclass(frozen=True)
class CompressOptions:
    cache: Path
    force: bool = False
    save_volumes: Path | None = None
    #: Regular expressions searched in SeriesDescription naming the DICOM water and fat series
    #: where UK Biobank descriptions and ImageType do not (imaging/dixon_series.py).
    water_pattern: str | None = None
    fat_pattern: str | None = None

    def __post_init__(self) -> None:
        SeriesPatterns(self.water_pattern, self.fat_pattern)  # a bad pattern is refused here, not once per exam


@dataclass
class ExamOutcome:
    """What happened to one exam."""

    stem: str
    source: str
    status: str  # "done", "skipped" or "failed"
    stage: str = ""
    reason: str = ""
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class CompressSummary:
    cache: Path
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    exam_seconds: list[float] = field(default_factory=list)
    failures: list[ExamOutcome] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.done + self.skipped + self.failed

    @property
    def seconds_per_exam(self) -> float:
        """Mean compute time of the exams processed in this run (one core each)."""
        return sum(self.exam_seconds) / len(self.exam_seconds) if self.exam_seconds else math.nan


def exam_stem(source: ExamInput) -> str:
    """The cache name of an exam: the zip or folder name, or the water NIfTI without suffixes."""
    name = source.path.name
    if source.kind == "zip":
        return source.path.stem
    if source.kind == "nifti_pair":
        for suffix in _NIFTI_SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        for marker in ("_water", "_W", "-water"):
            if name.endswith(marker):
                name = name[: -len(marker)]
        return name
    return name


def _looks_like_dicom_folder(folder: Path) -> bool:
    return any(path.is_file() and not path.name.startswith(".") for path in folder.iterdir())


def _inputs_in_folder(folder: Path) -> list[ExamInput]:
    zips = sorted(folder.glob("*.zip"))
    if zips:
        return [ExamInput(path=path, kind="zip") for path in zips]
    if _looks_like_dicom_folder(folder):
        return [ExamInput(path=folder, kind="dicom_folder")]
    raise InputError(f"{folder}: a folder with neither zips nor files")


def _inputs_in_list(listing: Path) -> list[ExamInput]:
    """A text file: one exam per line, a zip or folder, or `water.nii.gz,fat.nii.gz`."""
    inputs = []
    for number, raw in enumerate(listing.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [part.strip() for part in line.replace("\t", ",").split(",") if part.strip()]
        if len(parts) == 2:
            inputs.append(ExamInput(path=Path(parts[0]), kind="nifti_pair", fat_path=Path(parts[1])))
        elif len(parts) == 1:
            path = Path(parts[0])
            inputs.append(ExamInput(path=path, kind="dicom_folder" if path.is_dir() else "zip"))
        else:
            raise InputError(f"{listing}:{number}: expected a path or a water,fat pair, found {line!r}")
    return inputs


def discover_inputs(inputs: Iterable[str | Path]) -> list[ExamInput]:
    """Expand command-line inputs into exams; a path that does not exist is misuse.

    A file that is listed but broken (not a zip, truncated) is not misuse: it becomes a
    failure row when it is read.
    """
    exams: list[ExamInput] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        if path.is_dir():
            exams.extend(_inputs_in_folder(path))
        elif path.name.lower().endswith(_LIST_SUFFIXES):
            exams.extend(_inputs_in_list(path))
        else:
            exams.append(ExamInput(path=path, kind="zip"))
    unique: dict[str, ExamInput] = {}
    for exam in exams:
        stem = exam_stem(exam)
        if stem in unique and unique[stem].path != exam.path:
            logger.warning("two inputs share the name %s: %s and %s; keeping the first", stem, unique[stem].path, exam.path)
            continue
        unique.setdefault(stem, exam)
    return list(unique.values())


def compress_exam(source: ExamInput, options: CompressOptions) -> ExamOutcome:
    """Read, fuse and project one exam into the cache; never raises for bad input."""
    from mimir.imaging.fusion import fuse_stations
    from mimir.imaging.projection import build_representation
    from mimir.imaging.quality import assess_quality
    from mimir.imaging.read import read_exam

    stem = exam_stem(source)
    outcome = ExamOutcome(stem=stem, source=str(source.path), status="failed")
    started = time.perf_counter()
    stage = "read"
    try:
        ExamId.from_stem(stem).require_body_mri()
        exam = read_exam(source, options.water_pattern, options.fat_pattern)
        outcome.timings["read"] = time.perf_counter() - started
        stage = "fusion"
        volume = fuse_stations(exam.stations)
        outcome.timings["fusion"] = time.perf_counter() - started - outcome.timings["read"]
        stage = "projection"
        image = build_representation(volume)
        stage = "quality"
        qc = {
            **exam_identity(stem),
            "source": str(source.path),
            "stations_found": len(exam.stations) + exam.duplicates_dropped // 2,
            **assess_quality(exam.stations, volume),
            "duplicates_dropped": exam.duplicates_dropped,
            "skipped_files": exam.skipped_files,
            "read_notes": "; ".join(exam.notes + volume.notes),
        }
        if options.save_volumes is not None:
            stage = "save_volumes"
            from mimir.imaging.volume_io import save_volumes

            save_volumes(volume, options.save_volumes, stem)
        stage = "cache"
        write_qc(options.cache, stem, qc)
        write_image(options.cache, stem, image)
    except ExamReadError as error:
        outcome.stage, outcome.reason = error.stage, error.reason
    except MemoryError:
        outcome.stage, outcome.reason = stage, "out of memory"
    except Exception as error:  # noqa: BLE001 - one broken exam must not stop thousands
        logger.debug("exam %s failed at %s", stem, stage, exc_info=True)
        outcome.stage, outcome.reason = stage, f"{type(error).__name__}: {error}".splitlines()[0]
    else:
        outcome.status = "done"
    outcome.seconds = time.perf_counter() - started
    return outcome


def _csv_text(rows: Sequence[dict[str, object]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_failures(cache: Path, failures: Sequence[ExamOutcome]) -> Path:
    """failures.csv of this run: subject, input path, stage, one-line reason."""
    rows = [{"subject": f.stem, "input": f.source, "stage": f.stage, "reason": f.reason} for f in failures]
    path = failures_path(cache)
    atomic_write_text(path, _csv_text(rows, ["subject", "input", "stage", "reason"]))
    return path


def write_qc_table(cache: Path) -> Path:
    """qc.csv over every cached exam (this run's and earlier runs')."""
    rows = read_qc(cache)
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    path = qc_table_path(cache)
    atomic_write_text(path, _csv_text(rows, list(columns) or ["subject"]))
    return path


def _cached_problem(cache: Path, stem: str) -> str | None:
    """None when the exam is validly cached, "" when it is not cached, else what is wrong."""
    path = image_path(cache, stem)
    if not os.path.lexists(path):
        return ""
    return entry_problem(path)


def _remove_stale_temporaries(cache: Path) -> int:
    """Temporaries of writers that are gone (a killed run, or workers stopped mid-exam)."""
    return remove_stale_temporaries(cache) + remove_stale_temporaries(qc_folder(cache))


def _count(
    summary: CompressSummary,
    result: Outcome[ExamInput, ExamOutcome],
    progress: Callable[[ExamOutcome], None] | None,
) -> None:
    """Add one exam's outcome to the summary (a worker that died is a failure, not a bad exam)."""
    outcome = result.value
    if outcome is None:
        outcome = ExamOutcome(
            stem=exam_stem(result.item), source=str(result.item.path), status="failed",
            stage="worker", reason=f"{result.error_type}: {result.error}",
        )
    if outcome.status == "done":
        summary.done += 1
        summary.exam_seconds.append(outcome.seconds)
    else:
        summary.failed += 1
        summary.failures.append(outcome)
        logger.warning("%s failed at %s: %s", outcome.stem, outcome.stage, outcome.reason)
    if progress is not None:
        progress(outcome)


def compress_exams(
    inputs: Sequence[ExamInput],
    options: CompressOptions,
    *,
    workers: int | Executor = 1,
    progress: Callable[[ExamOutcome], None] | None = None,
) -> CompressSummary:
    """Compress every exam not yet validly cached; resumable, one failure row per bad exam.

    The cache must take new files before any exam is computed (CacheNotWritableError). A cache
    entry that is not a valid image (truncated, damaged, not a regular file) is recomputed, with
    a warning. When the final tables cannot be written (a full disk), the error says what was kept.
    `workers` is a number of local processes or an Executor (a Dask cluster, `mimir.cluster`).
    """
    started = time.perf_counter()
    cache = prepare_cache(Path(options.cache))
    removed = _remove_stale_temporaries(cache)
    if removed:
        logger.info("removed %d temporary files left by a killed run", removed)
    summary = CompressSummary(cache=cache)
    todo = []
    for source in inputs:
        stem = exam_stem(source)
        if options.force:
            todo.append(source)
            continue
        problem = _cached_problem(cache, stem)
        if problem is None:
            summary.skipped += 1
            if progress is not None:
                progress(ExamOutcome(stem=stem, source=str(source.path), status="skipped"))
        else:
            if problem:
                logger.warning("%s: the cached image is invalid (%s); compressing it again", stem, problem)
            todo.append(source)
    try:
        with contextlib.closing(map_outcomes(partial(compress_exam, options=options), todo, workers)) as results:
            for result in results:
                _count(summary, result, progress)
    except BaseException:
        _remove_stale_temporaries(cache)  # the workers stopped mid-exam have exited: their files are stale
        raise
    removed = _remove_stale_temporaries(cache)  # of workers killed mid-exam, whose exams ran again elsewhere
    if removed:
        logger.info("removed %d temporary files left by workers that died", removed)
    kept = (
        f"the {summary.done} images compressed in this run are kept in {cache} (a rerun skips them); "
        f"the {summary.failed} failures are in the log above"
    )
    with reported_write(failures_path(cache), kept):
        write_failures(cache, summary.failures)
    with reported_write(qc_table_path(cache), kept):
        write_qc_table(cache)
    summary.seconds = time.perf_counter() - started
    return summary
