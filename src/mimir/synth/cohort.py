"""Many synthetic participants: zips, reference.csv, truth.csv, quirks.csv, previews.

Every subject draws from its own random stream (seed, eid), so a cohort is identical
whatever the number of workers and a single subject can be regenerated alone.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from mimir import __version__
from mimir.atomic import atomic_write_text, check_can_create_folder
from mimir.errors import MimirError
from mimir.parallel import Executor, map_outcomes
from mimir.synth.anatomy import Anatomy, build_anatomy
from mimir.synth.measure import measure
from mimir.synth.missingness import draw_presence
from mimir.synth.preview import write_preview
from mimir.synth.quirks import QuirkRecord, validate_quirks
from mimir.synth.signal import render_signal
from mimir.synth.subject import SubjectParams, sample_subject
from mimir.synth.ukb_writer import ExamPlan, plan_exam, write_exam_zip
from mimir.targets.catalog import Target, catalog
from mimir.targets.fields import array_count, catalog_factor, export_columns

logger = logging.getLogger(__name__)

#: UK Biobank participant ids have 7 digits.
_EID_RANGE = (1_000_000, 6_000_000)


class CohortConfigError(MimirError, ValueError):
    """Cohort settings that cannot make a cohort (no subjects, not an imaging visit)."""


class CohortFolderError(MimirError, FileExistsError):
    """The output folder holds files of another cohort (or other files): writing there would
    mix two cohorts, whose reference.csv and truth.csv would then describe only one of them."""


#: What a cohort folder holds besides its subjects' zips.
_COHORT_ENTRIES = ("reference.csv", "truth.csv", "parameters.csv", "quirks.csv", "cohort.json", "previews")


@dataclass(frozen=True)
class CohortConfig:
    """Everything that defines a synthetic cohort."""

    n: int
    seed: int = 0
    instance: int = 2
    quirks: tuple[str, ...] = ()
    preview: bool = False
    on_grid: bool = False
    #: sd of the log of a thigh muscle radius factor drawn independently of everything else
    #: (0: the standard cohort, whose thigh muscle follows body size and build).
    thigh_muscle_sd: float = 0.0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise CohortConfigError(f"a cohort needs at least one subject, got n={self.n}")
        if not 0.0 <= self.thigh_muscle_sd <= 0.5:
            raise CohortConfigError(f"thigh_muscle_sd is the sd of a log factor, 0 to 0.5, got {self.thigh_muscle_sd}")
        if self.instance not in (2, 3):
            raise CohortConfigError(f"imaging visits are instances 2 and 3, got {self.instance}")
        validate_quirks(self.quirks)


def zip_name(eid: int, instance: int) -> str:
    """The UK Biobank field-20201 name of a subject's zip."""
    return f"{eid}_20201_{instance}_0.zip"


@dataclass(frozen=True)
class SubjectJob:
    """One subject to generate (picklable, for worker processes)."""

    eid: int
    seed: int
    instance: int
    out: Path
    quirks: tuple[str, ...]
    preview: bool
    on_grid: bool
    thigh_muscle_sd: float = 0.0
    #: (SubjectParams field, factor) pairs: those parameters multiplied once drawn, every draw the
    #: same: the subject's counterfactual twin, to see where a change of one parameter shows.
    parameter_scales: tuple[tuple[str, float], ...] = ()
    #: (SubjectParams field, amount) pairs added after the scales: a twin for parameters whose
    #: values may be negative or zero (fat pattern, pose, field of view), where a factor cannot serve.
    parameter_shifts: tuple[tuple[str, float], ...] = ()

    @property
    def zip_name(self) -> str:
        return zip_name(self.eid, self.instance)


@dataclass
class SubjectResult:
    eid: int
    zip_name: str
    truth: dict[str, float]
    parameters: dict[str, object]
    quirk_records: list[QuirkRecord]
    seconds: float


@dataclass
class CohortSummary:
    """What a cohort run produced (also written as cohort.json)."""

    out: Path
    config: CohortConfig
    eids: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    seconds_per_subject: float = 0.0

    @property
    def zips(self) -> list[Path]:
        return [self.out / zip_name(eid, self.config.instance) for eid in self.eids]


def draw_eids(n: int, seed: int) -> list[int]:
    """Distinct 7-digit participant ids, the same for a given seed."""
    rng = np.random.default_rng([seed, 0x5EED])
    eids: set[int] = set()
    while len(eids) < n:
        eids.update(int(e) for e in rng.integers(*_EID_RANGE, size=n - len(eids)))
    ordered = sorted(eids)
    rng.shuffle(ordered)
    return ordered[:n]


def assign_quirks(eids: Sequence[int], quirks: Sequence[str]) -> dict[int, tuple[str, ...]]:
    """One subject per quirk, in eid order; with fewer subjects than quirks, subjects take several."""
    assigned: dict[int, list[str]] = {}
    for index, quirk in enumerate(quirks):
        eid = eids[index % len(eids)]
        assigned.setdefault(eid, []).append(quirk)
    return {eid: tuple(names) for eid, names in assigned.items()}


def subject_rng(seed: int, eid: int) -> np.random.Generator:
    return np.random.default_rng([seed, eid])


def thigh_muscle_factor(seed: int, eid: int, sd: float) -> float:
    """The subject's independent thigh muscle factor, from a stream of its own: with it, the
    rest of the subject (every other draw) is the standard cohort's subject of the same seed."""
    if sd == 0.0:
        return 1.0
    return float(np.exp(np.random.default_rng([seed, eid, 1]).normal(0.0, sd)))


def _numeric_fields(params: SubjectParams) -> str:
    return ", ".join(f.name for f in fields(SubjectParams) if isinstance(getattr(params, f.name), float))


def scaled_parameters(params: SubjectParams, scales: Sequence[tuple[str, float]]) -> SubjectParams:
    """The subject with some numeric parameters multiplied (names of SubjectParams fields)."""
    changes = {}
    for name, factor in scales:
        value = getattr(params, name, None)
        if not isinstance(value, float) or not math.isfinite(factor) or factor <= 0:
            raise CohortConfigError(f"cannot scale {name!r} by {factor}: a positive factor of one of {_numeric_fields(params)}")
        changes[name] = value * factor
    return replace(params, **changes)


def shifted_parameters(params: SubjectParams, shifts: Sequence[tuple[str, float]]) -> SubjectParams:
    """The subject with some numeric parameters moved by an amount (names of SubjectParams fields)."""
    changes = {}
    for name, amount in shifts:
        value = getattr(params, name, None)
        if not isinstance(value, float) or not math.isfinite(amount):
            raise CohortConfigError(f"cannot shift {name!r} by {amount}: a finite amount added to one of {_numeric_fields(params)}")
        changes[name] = value + amount
    return replace(params, **changes)


def _draw_anatomy(
    rng: np.random.Generator, eid: int, on_grid: bool, thigh_muscle: float = 1.0,
    parameter_scales: Sequence[tuple[str, float]] = (), parameter_shifts: Sequence[tuple[str, float]] = (),
) -> tuple[SubjectParams, ExamPlan, Anatomy]:
    """The first draws of a subject from its generator: body parameters, exam plan, anatomy."""
    drawn = replace(sample_subject(rng, eid), thigh_muscle=thigh_muscle)
    params = shifted_parameters(scaled_parameters(drawn, parameter_scales), parameter_shifts)
    plan = plan_exam(rng, on_grid=on_grid)
    return params, plan, build_anatomy(params, plan.grid_slices, rng)


def subject_anatomy(
    seed: int, eid: int, *, on_grid: bool = False, thigh_muscle_sd: float = 0.0,
    parameter_scales: Sequence[tuple[str, float]] = (), parameter_shifts: Sequence[tuple[str, float]] = (),
) -> tuple[SubjectParams, ExamPlan, Anatomy]:
    """The parameters, exam plan and label volume of subject `eid` of a cohort made with `seed`.

    The same draws `generate_subject` makes (the cohort stores no label volumes), so the labels
    lie exactly where that subject's zip shows them: slice j of `anatomy.labels` is at
    z = plan.grid_z_top_mm - 3 j mm. Used to score saliency maps against the true anatomy.
    """
    return _draw_anatomy(subject_rng(seed, eid), eid, on_grid, thigh_muscle_factor(seed, eid, thigh_muscle_sd),
                         parameter_scales, parameter_shifts)


def generate_subject(job: SubjectJob) -> SubjectResult:
    """Anatomy -> signal -> zip (+ ground truth and preview) for one participant."""
    started = time.perf_counter()
    rng = subject_rng(job.seed, job.eid)
    thigh_muscle = thigh_muscle_factor(job.seed, job.eid, job.thigh_muscle_sd)
    params, plan, anatomy = _draw_anatomy(rng, job.eid, job.on_grid, thigh_muscle, job.parameter_scales,
                                          job.parameter_shifts)
    water, fat = render_signal(anatomy, params, rng)
    truth = measure(anatomy, params, rng)
    records = write_exam_zip(
        job.out / job.zip_name, water, fat, plan, eid=job.eid, instance=job.instance, rng=rng, quirks=job.quirks
    )
    if job.preview:
        write_preview(water, fat, job.out / "previews" / f"{Path(job.zip_name).stem}.png")
    return SubjectResult(
        eid=job.eid,
        zip_name=job.zip_name,
        truth=truth,
        parameters=asdict(params),
        quirk_records=list(records),
        seconds=time.perf_counter() - started,
    )


def _format_value(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


#: Spread (catalog unit) of the repeated readings of a field around the subject's true value.
READING_SD = 2.0
#: Chance that one of a subject's repeated readings was not taken.
READING_DROPOUT = 0.05


def export_readings(value: float | None, target: Target, rng: np.random.Generator) -> list[float | None]:
    """A true value as a UK Biobank export holds it: in the field's showcase unit, one value per
    array index. Repeated readings scatter around the value with a mean of exactly the value,
    so that the targets read back are the truth; when one reading is missing, the other is the
    value itself."""
    if value is None or math.isnan(value):
        return [None] * array_count(target)
    showcase = value / catalog_factor(target)
    arrays = array_count(target)
    if arrays == 1:
        return [showcase]
    offsets = rng.normal(0.0, READING_SD / catalog_factor(target), size=arrays)
    readings: list[float | None] = list(showcase + offsets - offsets.mean())
    if rng.random() < READING_DROPOUT:
        readings = [showcase] + [None] * (arrays - 1)
    return readings


def _reference_rows(results: Sequence[SubjectResult], config: CohortConfig) -> tuple[list[str], list[list[str]]]:
    """UK Biobank export style: eid, then `{field}-{instance}.{array}` or the catalog name, values
    in each field's showcase unit (DXA masses in g) with every array of repeated measurements."""
    targets = catalog()
    header = ["eid"] + [column for t in targets for column in export_columns(t, config.instance)]
    rows = []
    for result in results:
        presence = draw_presence(np.random.default_rng([config.seed, result.eid, 0xAB5E]), targets)
        readings_rng = np.random.default_rng([config.seed, result.eid, 0x2EAD])
        row = [str(result.eid)]
        for target in targets:
            value = result.truth.get(target.name) if presence[target.name] else None
            row += [_format_value(reading) for reading in export_readings(value, target, readings_rng)]
        rows.append(row)
    return header, rows


def _truth_rows(results: Sequence[SubjectResult], config: CohortConfig) -> tuple[list[str], list[list[str]]]:
    names = [t.name for t in catalog()]
    header = ["eid", "instance", *names]
    rows = [
        [str(r.eid), str(config.instance)] + [_format_value(r.truth.get(name)) for name in names] for r in results
    ]
    return header, rows


def _parameter_rows(results: Sequence[SubjectResult]) -> tuple[list[str], list[list[str]]]:
    header = list(results[0].parameters) if results else ["eid"]
    rows = [[_format_value(v) if isinstance(v, float) else str(v) for v in r.parameters.values()] for r in results]
    return header, rows


def _write_tables(out: Path, results: list[SubjectResult], config: CohortConfig) -> None:
    results = sorted(results, key=lambda r: r.eid)
    atomic_write_text(out / "reference.csv", _csv_text(*_reference_rows(results, config)))
    atomic_write_text(out / "truth.csv", _csv_text(*_truth_rows(results, config)))
    atomic_write_text(out / "parameters.csv", _csv_text(*_parameter_rows(results)))
    if config.quirks:
        quirk_rows = [
            [q.eid, r.zip_name, q.quirk, "" if q.station is None else q.station, q.detail]
            for r in results
            for q in r.quirk_records
        ]
        header = ["eid", "zip", "quirk", "station", "detail"]
        atomic_write_text(out / "quirks.csv", _csv_text(header, quirk_rows))


def _config_record(config: CohortConfig) -> dict[str, object]:
    """The settings as cohort.json records them (and as a rerun compares them).

    A standard cohort records no thigh_muscle_sd, as cohorts written before it existed did, so
    that they still rerun."""
    record = {**asdict(config), "quirks": list(config.quirks)}
    if config.thigh_muscle_sd == 0.0:
        del record["thigh_muscle_sd"]
    return record


def _recorded_config(record_path: Path) -> dict[str, object] | None:
    """The settings a cohort.json records, None when it cannot be read as one."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    config = record.get("config") if isinstance(record, dict) else None
    return config if isinstance(config, dict) else None


def check_cohort_folder(out: Path, config: CohortConfig, eids: Sequence[int]) -> None:
    """Refuse an output folder that cannot be made, or that holds anything but this cohort.

    An empty (or missing) folder takes the cohort; one whose cohort.json records these very
    settings is rerun (same seed, same files); one that holds only this cohort's files without
    a cohort.json (a run that was stopped) is completed. Anything else would mix two cohorts.
    Hidden files (temporaries of a stopped writer, desktop metadata) are ignored.
    """
    check_can_create_folder(out)
    if not out.is_dir():
        return
    record_path = out / "cohort.json"
    if record_path.is_file():
        recorded = _recorded_config(record_path)
        if recorded == _config_record(config):
            return
        described = "an unreadable cohort.json" if recorded is None else (
            "another cohort (" + ", ".join(f"{key}={value}" for key, value in recorded.items()) + ")"
        )
        raise CohortFolderError(
            f"{out} already holds {described}; give an empty folder, or the same settings to rerun it"
        )
    expected = set(_COHORT_ENTRIES) | {zip_name(eid, config.instance) for eid in eids}
    foreign = sorted(path.name for path in out.iterdir() if not path.name.startswith(".") and path.name not in expected)
    if foreign:
        raise CohortFolderError(
            f"{out} is not empty and holds files that are not this cohort's ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); give an empty folder"
        )


def generate_cohort(
    config: CohortConfig,
    out: Path,
    *,
    workers: int | Executor = 1,
    progress: Callable[[SubjectResult | None], None] | None = None,
) -> CohortSummary:
    """Write a synthetic cohort to `out`; `progress` is called once per finished subject."""
    started = time.perf_counter()
    out = Path(out)
    eids = draw_eids(config.n, config.seed)
    check_cohort_folder(out, config, eids)
    out.mkdir(parents=True, exist_ok=True)
    quirks_of = assign_quirks(eids, config.quirks)
    jobs = [
        SubjectJob(
            eid=eid,
            seed=config.seed,
            instance=config.instance,
            out=out,
            quirks=quirks_of.get(eid, ()),
            preview=config.preview,
            on_grid=config.on_grid,
            thigh_muscle_sd=config.thigh_muscle_sd,
        )
        for eid in eids
    ]
    results: list[SubjectResult] = []
    summary = CohortSummary(out=out, config=config)
    for outcome in map_outcomes(generate_subject, jobs, workers):
        if outcome.ok and outcome.value is not None:
            results.append(outcome.value)
            if progress is not None:
                progress(outcome.value)
        else:
            logger.error("subject %d failed: %s: %s", outcome.item.eid, outcome.error_type, outcome.error)
            summary.failed[outcome.item.eid] = f"{outcome.error_type}: {outcome.error}"
            if progress is not None:
                progress(None)
    _write_tables(out, results, config)
    summary.eids = sorted(r.eid for r in results)
    summary.seconds = time.perf_counter() - started
    summary.seconds_per_subject = float(np.mean([r.seconds for r in results])) if results else math.nan
    record = {
        "mimir_version": __version__,
        "config": _config_record(config),
        "subjects": len(results),
        "failed": summary.failed,
        "seconds": round(summary.seconds, 3),
        "seconds_per_subject_one_core": round(summary.seconds_per_subject, 3),
    }
    atomic_write_text(out / "cohort.json", json.dumps(record, indent=2) + "\n")
    return summary
