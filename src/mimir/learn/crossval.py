"""K-fold cross-validation of one module: fold networks, out-of-fold predictions, calibration.

A cross-validation folder `CV/` (`mimir.runs.layout.CrossvalFolder`) holds

    config.toml                     the training configuration every fold uses
    splits.json                     subject-grouped, stratified folds (written once; see splits.py)
    reference.csv                   eid, instance and the module's reference values of every exam
    data_summary.json               exams, subjects and known values per fold
    crossval.json                   module, folds, software versions, sessions and timings
    fold_{k}/                       a training run folder (see train.py) plus fold.json when done,
                                    and baseline_predictions.csv from the ridge baseline
    oof_predictions.csv             eid, instance, fold, {name}, {name}_sd: every exam predicted by
                                    the network that did not see it; sd as the network gives it
    calibration.csv                 target, variance_scale, n
    oof_predictions_calibrated.csv  the same with each sd multiplied by sqrt(variance_scale)
    metrics.csv, metrics.md         per target N, ICC(2,1), R2, MAE, MAPE, AUC/precision/recall
                                    (binary), AUCE before (`auce`) and after (`auce_scaled`)
                                    calibration, and the published cv_* values beside them
    curves.csv                      target, kind, x, y, stage: calibration and sparsification
                                    curves before and after calibration
    baseline_predictions.csv        ridge-regression out-of-fold predictions (same folds)
    baseline_metrics.csv            the same metrics for the ridge baseline
    summary.csv                     the network's headline numbers with baseline_icc, baseline_mae
    report.html                     one self-contained page, written after a merge by the command
                                    that asked for it (see report/crossval_report.py)
    explain/                        with --explain: out-of-fold saliency maps and cohort maps,
                                    written by the command through explain/crossval.py

Calibration objective. One variance scale factor c per target is fitted on the out-of-fold
predictions: the c that minimises the Gaussian negative log-likelihood of the reference values
when every predicted variance is multiplied by c. Its closed form is c = mean(z^2), the mean
squared standardised error z = (reference - mean) / sd over all exams with a reference. c > 1
means the network was overconfident. Prediction applies the same c: sd_calibrated = sd *
sqrt(c). Because the factor is fitted on the same out-of-fold predictions it is judged on,
"AUCE after calibration" is an in-sample figure; it still shows how well a single factor
can repair the uncertainty of a target.

Folds can run on several machines (`fold_ids`) against one shared folder; `merge_crossval`
combines whichever folds are complete.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mimir.atomic import atomic_write_text
from mimir.errors import MimirError
from mimir.evaluation.calibration import (
    apply_variance_scale,
    auce,
    calibration_curve,
    fit_variance_scale,
    sparsification_curve,
    standardised_errors,
)
from mimir.evaluation.evaluate import column_values, evaluate_predictions, write_metrics
from mimir.inference.table import sd_column
from mimir.learn.baseline import BaselineConfig, RidgeCrossval, image_features
from mimir.learn.dataset import (
    assemble_exams,
    index_image_cache,
    read_targets,
    without_excluded,
)
from mimir.learn.splits import Splits, load_or_create_splits
from mimir.learn.target_sets import ModuleDefinition, resolve_module
from mimir.parallel import Executor
from mimir.runs.config import TrainConfig
from mimir.runs.layout import CrossvalFolder, FoldFolder
from mimir.targets.catalog import Target, get_target
from mimir.versions import software_versions

if TYPE_CHECKING:
    import pandas as pd

    from mimir.learn.train import TrainProgress

logger = logging.getLogger(__name__)

#: Configuration keys that may differ between the machines sharing one folder.
_RUNTIME_KEYS = ("workers",)

FoldProgress = Callable[[int, "TrainProgress"], None]


class CrossvalError(MimirError, RuntimeError):
    """A cross-validation folder that cannot be run or merged as asked."""


class IncompleteCrossvalError(CrossvalError):
    """Merging needs folds that have not finished."""

    def __init__(self, out: Path, missing: Sequence[int]):
        self.out = out
        self.missing = list(missing)
        listed = ", ".join(map(str, self.missing))
        super().__init__(
            f"{out}: folds {listed} are not complete; run them (--fold-ids {','.join(map(str, self.missing))}) "
            "or merge with allow_partial / --allow-partial"
        )

    def __reduce__(self) -> tuple[type, tuple[Path, list[int]]]:
        """Rebuilt from its arguments, not its message: it must cross process boundaries."""
        return (type(self), (self.out, self.missing))


@dataclass
class CrossvalResult:
    """Where a cross-validation's outputs are; the merged tables are None until merged."""

    out: Path
    folds: int
    completed: list[int]
    missing: list[int]
    metrics: pd.DataFrame | None = None
    oof_predictions: Path | None = None
    oof_predictions_calibrated: Path | None = None
    calibration: Path | None = None
    metrics_path: Path | None = None
    curves: Path | None = None
    summary: Path | None = None
    baseline_predictions: Path | None = None
    baseline_metrics: Path | None = None
    fold_seconds: dict[int, float] = field(default_factory=dict)
    #: Cached exams left out of this run because the exclusion list names them.
    excluded: int = 0

    @property
    def merged(self) -> bool:
        return self.metrics is not None


# preparation --------------------------------------------------------------------------------------
@dataclass
class _Prepared:
    definition: ModuleDefinition
    splits: Splits
    reference: pd.DataFrame  # eid, instance, targets, in eid/instance order
    paths: list[Path]  # image of each reference row
    fold: np.ndarray  # fold of each reference row
    excluded: int = 0  # cached exams the exclusion list named


def _check_config(folder: CrossvalFolder, config: TrainConfig) -> None:
    path = folder.config
    if not path.exists():
        atomic_write_text(path, config.to_toml())
        return
    recorded = TrainConfig.from_toml(path)
    differing = [
        name for name in vars(config)
        if name not in _RUNTIME_KEYS and getattr(config, name) != getattr(recorded, name)
    ]
    if differing:
        raise CrossvalError(
            f"{folder.path} was run with another configuration (differs in {', '.join(differing)}); "
            "every fold must share one configuration: use the recorded one or another folder"
        )


def _check_reference(folder: CrossvalFolder, reference: pd.DataFrame) -> None:
    import pandas as pd

    path = folder.reference
    if not path.exists():
        atomic_write_text(path, reference.to_csv(index=False))
        return
    recorded = pd.read_csv(path)
    same_shape = list(recorded.columns) == list(reference.columns) and len(recorded) == len(reference)
    same = same_shape and (
        np.array_equal(recorded[["eid", "instance"]].to_numpy(), reference[["eid", "instance"]].to_numpy())
        and np.allclose(
            recorded.iloc[:, 2:].to_numpy(dtype=np.float64),
            reference.iloc[:, 2:].to_numpy(dtype=np.float64),
            rtol=1e-12, atol=0.0, equal_nan=True,
        )
    )
    if not same:
        raise CrossvalError(
            f"the exams or reference values differ from those recorded in {path}; "
            "a cross-validation folder serves one data set: use another output folder"
        )


def _data_summary(prepared: _Prepared, dropped: dict[str, int], images: Path, targets_source: str) -> dict[str, object]:
    reference, targets = prepared.reference, prepared.definition.targets
    values = reference[list(targets)].to_numpy(dtype=np.float64)
    per_fold = []
    for fold in range(prepared.splits.folds):
        rows = prepared.fold == fold
        per_fold.append(
            {
                "fold": fold,
                "n_subjects": int(reference.loc[rows, "eid"].nunique()),
                "n_exams": int(rows.sum()),
                "n_known": {name: int(np.sum(~np.isnan(values[rows, column]))) for column, name in enumerate(targets)},
            }
        )
    return {
        "module": prepared.definition.name,
        "targets": list(targets),
        "images": str(images),
        "targets_source": targets_source,
        "n_subjects": int(reference["eid"].nunique()),
        "n_exams": len(reference),
        "missing_fraction": float(np.isnan(values).mean()) if values.size else math.nan,
        "dropped": dropped,
        "folds": per_fold,
    }


def _prepare(
    config: TrainConfig,
    images: Path,
    targets: pd.DataFrame | Path,
    module: str,
    folder: CrossvalFolder,
    folds: int | None,
    exclude: str | Path | None,
) -> _Prepared:
    definition = resolve_module(module, config.modules)
    index, excluded = without_excluded(index_image_cache(images), exclude)
    folder.path.mkdir(parents=True, exist_ok=True)
    _check_config(folder, config)
    exams = assemble_exams(index, read_targets(targets), definition.targets)
    exams.dropped["excluded_by_list"] = excluded
    if len(exams) == 0:
        raise CrossvalError(f"no exam has both an image in {images} and a known target of module {definition.name}")
    reference = exams.table[["eid", "instance", *definition.targets]].reset_index(drop=True)
    new_split = not folder.splits.exists()
    splits = load_or_create_splits(folder.splits, reference, definition.name, definition.targets, folds, config.seed)
    _check_reference(folder, reference)
    prepared = _Prepared(
        definition, splits, reference, list(exams.table["path"]), splits.fold_column(reference["eid"]), excluded
    )
    if new_split or not folder.data_summary.exists():
        source = str(targets) if not hasattr(targets, "columns") else "in-memory table"
        _write_json(folder.data_summary, _data_summary(prepared, exams.dropped, images, source))
    return prepared


# running ------------------------------------------------------------------------------------------
def run_crossval(
    config: TrainConfig,
    images: Path | str,
    targets: pd.DataFrame | Path | str,
    module: str,
    out: Path | str,
    *,
    folds: int | None = None,
    fold_ids: Sequence[int] | None = None,
    device: str = "auto",
    progress: FoldProgress | None = None,
    init: str | None = None,
    baseline: BaselineConfig | None = BaselineConfig(),
    exclude: str | Path | None = None,
    executor: Executor | None = None,
) -> CrossvalResult:
    """Train the requested folds (all by default) and, once every fold is done, merge.

    `folds=None` takes the folder's recorded fold count (10 for a new folder). Complete folds
    are skipped and interrupted ones resume from their newest checkpoint, so rerunning the same
    call after a crash continues where it stopped. `init` overrides the config's init.
    `baseline=None` skips the ridge baseline. `exclude` is an exclusion list
    (`mimir.imaging.exclusions`): the exams it names are left out of the folds and counted
    (`CrossvalResult.excluded`, `dropped.excluded_by_list` in data_summary.json); the folder
    records the exams it serves, so a rerun must give the same list. Returns the merged result when all folds are
    complete, otherwise the lists of completed and missing folds.

    With an `executor` (`mimir.cluster.DaskExecutor`) each fold is one task on the cluster,
    asking for `resources={"GPU": 1}` when `device` names CUDA (`fold_resources`); the folder
    must be on storage every worker sees. `progress` is not called then (the folds train
    elsewhere); each finished fold is logged. A fold that fails on its worker does not stop the
    others: once they end, CrossvalError names it and the rerun trains only what is missing.
    """
    started = time.perf_counter()
    started_at = _now()
    out, images = Path(out), Path(images)
    folder = CrossvalFolder(out)
    if init is not None:
        config = config.replace(init=init)
    prepared = _prepare(config, images, targets, module, folder, folds, exclude)
    count = prepared.splits.folds
    requested = _requested_folds(fold_ids, count)
    if baseline is not None:
        _run_baseline(folder, prepared, baseline, requested)
    jobs = [
        FoldJob(config, images, prepared.reference, prepared.fold == fold, prepared.definition.name, folder.path, fold, count, device)
        for fold in requested
        if not _skipped_as_complete(folder, fold, count)
    ]
    if executor is None:
        trained = {job.fold: train_fold(job, progress) for job in jobs}
    else:
        trained = _train_folds_on(executor, jobs)
    _record_session(folder, prepared, config, images, device, started_at, time.perf_counter() - started, requested, trained)
    completed, missing = _fold_status(folder, count)
    if missing:
        logger.info("folds %s are still missing; run them, then merge", missing)
        return CrossvalResult(out, count, completed, missing, fold_seconds=trained, excluded=prepared.excluded)
    merged = merge_crossval(out)
    merged.fold_seconds, merged.excluded = trained, prepared.excluded
    return merged


@dataclass(frozen=True)
class FoldJob:
    """Everything one fold's training needs, picklable: a task for a local loop or a cluster."""

    config: TrainConfig
    images: Path
    reference: pd.DataFrame  # eid, instance and targets of every exam of the cross-validation
    in_fold: np.ndarray  # which reference rows this fold holds out
    module: str
    out: Path  # the cross-validation folder
    fold: int
    folds: int
    device: str


def _skipped_as_complete(folder: CrossvalFolder, fold: int, count: int) -> bool:
    if folder.fold(fold).is_complete():
        logger.info("fold %d of %d is complete; skipped", fold, count)
        return True
    return False


def train_fold(job: FoldJob, progress: FoldProgress | None = None) -> float:
    """Train (or resume) one fold's network into CV/fold_K and mark it done; returns its seconds."""
    from mimir.learn.train import train

    folder = CrossvalFolder(job.out)
    logger.info("training fold %d of %d", job.fold, job.folds)
    started = time.perf_counter()
    in_fold = job.in_fold
    keys = job.reference[["eid", "instance"]]
    callback = None if progress is None else (lambda event: progress(job.fold, event))
    result = train(
        job.config, job.images, job.reference, job.module, folder.fold(job.fold).path,
        train_ids=keys[~in_fold], val_ids=keys[in_fold], device=job.device, resume=True, progress=callback,
    )
    seconds = time.perf_counter() - started
    _write_json(
        folder.fold(job.fold).done,
        {
            "fold": job.fold,
            "finished": _now(),
            "seconds": round(seconds, 3),
            "iterations": result.iterations,
            "n_train_exams": int((~in_fold).sum()),
            "n_test_exams": int(in_fold.sum()),
            "host": socket.gethostname(),
        },
    )
    return seconds


def fold_resources(device: str) -> dict[str, float] | None:
    """What a fold asks of a Dask worker: one GPU when it trains on CUDA (workers declare
    `--resources GPU=1`); nothing on a CPU. 'auto' resolves on the worker and asks for nothing."""
    return {"GPU": 1} if device.startswith("cuda") else None


def _train_folds_on(executor: Executor, jobs: Sequence[FoldJob]) -> dict[int, float]:
    """One task per fold; every fold runs to its end before a failed one is reported."""
    trained: dict[int, float] = {}
    failed: list[str] = []
    resources = fold_resources(jobs[0].device) if jobs else None
    options = {} if resources is None else {"resources": resources}
    for outcome in executor.map_outcomes(train_fold, jobs, **options):
        if outcome.ok:
            trained[outcome.item.fold] = float(outcome.value)
            logger.info("fold %d finished in %.1f s", outcome.item.fold, outcome.value)
        else:
            logger.error("fold %d failed: %s: %s", outcome.item.fold, outcome.error_type, outcome.error)
            failed.append(f"fold {outcome.item.fold} ({outcome.error_type}: {outcome.error})")
    if failed:
        raise CrossvalError(f"{'; '.join(failed)}; the other folds are kept, and a rerun trains only the missing ones")
    return trained


def _requested_folds(fold_ids: Sequence[int] | None, count: int) -> list[int]:
    if fold_ids is None:
        return list(range(count))
    requested = sorted(set(int(fold) for fold in fold_ids))
    outside = [fold for fold in requested if not 0 <= fold < count]
    if outside or not requested:
        raise CrossvalError(f"fold ids must lie in 0..{count - 1}; got {list(fold_ids)}")
    return requested


def _run_baseline(folder: CrossvalFolder, prepared: _Prepared, config: BaselineConfig, requested: Sequence[int]) -> None:
    """Ridge predictions for every requested fold that lacks them (all exams are featurised once)."""
    import pandas as pd

    recorded_path = folder.baseline_config
    settings = {"size": config.size, "alphas": list(config.alphas), "inner_folds": config.inner_folds}
    if recorded_path.exists():
        recorded = json.loads(recorded_path.read_text())
        if recorded != settings:
            raise CrossvalError(f"{recorded_path} records baseline settings {recorded}, not {settings}")
    else:
        _write_json(recorded_path, settings)
    needed = [fold for fold in requested if not folder.fold(fold).baseline_predictions.is_file()]
    if not needed:
        return
    started = time.perf_counter()
    features = image_features(prepared.paths, config.size)
    targets = prepared.definition.targets
    values = prepared.reference[list(targets)].to_numpy(dtype=np.float64)
    ridge = RidgeCrossval(features, values, prepared.fold, prepared.splits.folds, config)
    for fold in needed:
        result = ridge.predict_fold(fold)
        table = prepared.reference.iloc[result.rows][["eid", "instance"]].reset_index(drop=True)
        table = pd.concat([table, pd.DataFrame(result.predictions, columns=list(targets))], axis=1)
        fold_folder = folder.fold(fold)
        fold_folder.path.mkdir(parents=True, exist_ok=True)
        _write_json(fold_folder.baseline_alphas, dict(zip(targets, result.alphas.tolist(), strict=True)))
        atomic_write_text(fold_folder.baseline_predictions, table.to_csv(index=False))
    logger.info("ridge baseline for folds %s in %.1f s (%d features)", needed, time.perf_counter() - started, features.shape[1])


def _fold_status(folder: CrossvalFolder, count: int) -> tuple[list[int], list[int]]:
    completed = [fold for fold in range(count) if folder.fold(fold).is_complete()]
    return completed, [fold for fold in range(count) if fold not in completed]


# merging ------------------------------------------------------------------------------------------
def merge_crossval(out: Path | str, allow_partial: bool = False) -> CrossvalResult:
    """Combine the complete folds into out-of-fold predictions, calibration, metrics and curves.

    Raises IncompleteCrossvalError when folds are missing, unless `allow_partial`.
    """
    import pandas as pd

    started = time.perf_counter()
    out = Path(out)
    folder = CrossvalFolder(out)
    for required in (folder.splits, folder.reference):
        if not required.is_file():
            raise CrossvalError(f"{out} is not a cross-validation folder (no {required.name})")
    splits = Splits.from_json(folder.splits.read_text(encoding="utf-8"))
    reference = pd.read_csv(folder.reference)
    targets = [get_target(name) for name in splits.targets]
    completed, missing = _fold_status(folder, splits.folds)
    if not completed:
        raise IncompleteCrossvalError(out, missing)
    if missing and not allow_partial:
        raise IncompleteCrossvalError(out, missing)
    if missing:
        logger.warning("merging %d of %d folds; folds %s are missing", len(completed), splits.folds, missing)
    reference = reference.assign(fold=splits.fold_column(reference["eid"]))
    reference = reference[reference["fold"].isin(completed)].reset_index(drop=True)

    oof = _stack_folds(folder, completed, lambda fold: fold.val_predictions, reference)
    factors = _calibration_factors(oof, reference, targets)
    calibrated = _calibrated(oof, factors)
    metrics = evaluate_predictions(oof, reference, targets)
    result = CrossvalResult(out, splits.folds, completed, missing, metrics=metrics)
    result.oof_predictions = _write_csv(folder.oof_predictions, oof)
    result.oof_predictions_calibrated = _write_csv(folder.oof_predictions_calibrated, calibrated)
    result.calibration = _write_csv(folder.calibration, factors)
    result.metrics_path, _ = write_metrics(metrics, out)
    result.curves = _write_csv(folder.curves, _curves(oof, calibrated, reference, targets))
    baseline_metrics = None
    if all(folder.fold(fold).baseline_predictions.is_file() for fold in completed):
        baseline = _stack_folds(folder, completed, lambda fold: fold.baseline_predictions, reference)
        baseline_metrics = evaluate_predictions(baseline, reference, targets)
        result.baseline_predictions = _write_csv(folder.baseline_predictions, baseline)
        result.baseline_metrics = _write_csv(folder.baseline_metrics, baseline_metrics)
    else:
        logger.warning("some folds have no ridge baseline predictions; baseline_metrics.csv is not written")
    result.summary = _write_csv(folder.summary, summary_table(metrics, calibrated, reference, baseline_metrics))
    _record_merge(folder, completed, missing, time.perf_counter() - started)
    return result


def _stack_folds(
    folder: CrossvalFolder, completed: Sequence[int], file_of: Callable[[FoldFolder], Path], reference: pd.DataFrame
) -> pd.DataFrame:
    """One table of every completed fold's predictions with a fold column, checked against the split."""
    import pandas as pd

    parts = []
    for fold in completed:
        part = pd.read_csv(file_of(folder.fold(fold)))
        part.insert(2, "fold", fold)
        parts.append(part)
    table = pd.concat(parts, ignore_index=True).sort_values(["eid", "instance"]).reset_index(drop=True)
    expected = reference[["eid", "instance", "fold"]].sort_values(["eid", "instance"]).reset_index(drop=True)
    if not table[["eid", "instance", "fold"]].equals(expected.astype(table[["eid", "instance", "fold"]].dtypes)):
        raise CrossvalError(
            f"the {file_of(folder.fold(completed[0])).name} files of folds {list(completed)} do not cover each exam of those folds exactly once; "
            "a fold folder may be from another split"
        )
    return table


def _calibration_factors(oof: pd.DataFrame, reference: pd.DataFrame, targets: Sequence[Target]) -> pd.DataFrame:
    """One NLL-optimal variance scale per target, with the number of exams it was fitted on."""
    import pandas as pd

    rows = []
    for target in targets:
        mean, sd = column_values(oof, target.name), column_values(oof, sd_column(target.name))
        truth = column_values(reference, target.name)
        factor = fit_variance_scale(mean, sd, truth)
        rows.append({"target": target.name, "variance_scale": factor, "n": int(standardised_errors(mean, sd, truth).size)})
        if not (math.isfinite(factor) and factor > 0):
            logger.warning("target %s: no usable variance scale (%s); its sd stays uncalibrated", target.name, factor)
    return pd.DataFrame(rows, columns=["target", "variance_scale", "n"])


def _usable(factor: float) -> bool:
    return math.isfinite(factor) and factor > 0


def _calibrated(oof: pd.DataFrame, factors: pd.DataFrame) -> pd.DataFrame:
    calibrated = oof.copy()
    for name, factor in zip(factors["target"], factors["variance_scale"], strict=True):
        if _usable(float(factor)):
            calibrated[sd_column(name)] = apply_variance_scale(column_values(oof, sd_column(name)), float(factor))
    return calibrated


def _curves(
    oof: pd.DataFrame, calibrated: pd.DataFrame, reference: pd.DataFrame, targets: Sequence[Target]
) -> pd.DataFrame:
    """Long table: calibration (x = nominal coverage, y = observed share) and sparsification
    (x = share removed, y = MAE; kind `sparsification_oracle` removes by true error)."""
    import pandas as pd

    rows: list[dict[str, object]] = []
    for target in targets:
        truth = column_values(reference, target.name)
        for stage, table in (("before", oof), ("after", calibrated)):
            mean, sd = column_values(table, target.name), column_values(table, sd_column(target.name))
            curve = calibration_curve(mean, sd, truth)
            rows += _curve_rows(target.name, "calibration", curve.expected, curve.observed, stage)
            sparsification = sparsification_curve(mean, sd, truth)
            rows += _curve_rows(target.name, "sparsification", sparsification.fractions, sparsification.by_uncertainty, stage)
            rows += _curve_rows(target.name, "sparsification_oracle", sparsification.fractions, sparsification.oracle, stage)
    return pd.DataFrame(rows, columns=["target", "kind", "x", "y", "stage"])


def _curve_rows(name: str, kind: str, x: np.ndarray, y: np.ndarray, stage: str) -> list[dict[str, object]]:
    return [{"target": name, "kind": kind, "x": float(a), "y": float(b), "stage": stage} for a, b in zip(x, y, strict=True)]


SUMMARY_COLUMNS = (
    "name", "module", "ukb_field", "unit", "kind", "n", "icc", "r2", "mae", "bias", "mape_percent", "auc",
    "auce", "auce_calibrated", "variance_scale", "baseline_icc", "baseline_r2", "baseline_mae",
    "cv_n", "cv_icc", "cv_r2", "cv_mae", "cv_mape_percent",
)


def summary_table(
    metrics: pd.DataFrame, calibrated: pd.DataFrame, reference: pd.DataFrame, baseline: pd.DataFrame | None
) -> pd.DataFrame:
    """The paper-like table: network metrics, AUCE after calibration, ridge baseline, published values."""
    table = metrics.copy()
    by_name = reference.set_index(["eid", "instance"])
    aligned = calibrated.set_index(["eid", "instance"]).reindex(by_name.index)
    table["auce_calibrated"] = [
        auce(aligned[name].to_numpy(dtype=np.float64), aligned[sd_column(name)].to_numpy(dtype=np.float64),
             by_name[name].to_numpy(dtype=np.float64))
        for name in table["name"]
    ]
    table["variance_scale"] = table["variance_factor"]
    for metric in ("icc", "r2", "mae"):
        column = f"baseline_{metric}"
        table[column] = math.nan if baseline is None else table["name"].map(baseline.set_index("name")[metric])
    return table[list(SUMMARY_COLUMNS)]


def _write_csv(path: Path, table: pd.DataFrame) -> Path:
    atomic_write_text(path, table.to_csv(index=False))
    return path


# records ------------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, default=str) + "\n")


def _read_record(folder: CrossvalFolder) -> dict[str, object]:
    path = folder.record
    return json.loads(path.read_text()) if path.exists() else {}


def _record_session(
    folder: CrossvalFolder,
    prepared: _Prepared,
    config: TrainConfig,
    images: Path,
    device: str,
    started_at: str,
    seconds: float,
    requested: Sequence[int],
    trained: dict[int, float],
) -> None:
    """Append this invocation to crossval.json (machines sharing a folder each add their own)."""
    record = _read_record(folder)
    record.update(
        {
            "module": prepared.definition.name,
            "targets": list(prepared.definition.targets),
            "folds": prepared.splits.folds,
            "seed": prepared.splits.seed,
            "images": str(images),
            "config": asdict(config),
            "data_summary": folder.data_summary.name,
        }
    )
    sessions = list(record.get("sessions", []))
    sessions.append(
        {
            "started": started_at,
            "seconds": round(seconds, 3),
            "device": device,
            "fold_ids": list(requested),
            "folds_trained": {str(fold): round(value, 3) for fold, value in trained.items()},
            "software": software_versions(),
        }
    )
    record["sessions"] = sessions
    _write_json(folder.record, record)


def _record_merge(folder: CrossvalFolder, completed: Sequence[int], missing: Sequence[int], seconds: float) -> None:
    record = _read_record(folder)
    fold_seconds = {}
    for fold in completed:
        done = json.loads(folder.fold(fold).done.read_text())
        fold_seconds[str(fold)] = done.get("seconds")
    record["merge"] = {
        "merged": _now(),
        "seconds": round(seconds, 3),
        "completed_folds": list(completed),
        "missing_folds": list(missing),
        "partial": bool(missing),
        "fold_training_seconds": fold_seconds,
        "software": software_versions(),
    }
    _write_json(folder.record, record)


__all__ = [
    "CrossvalError",
    "CrossvalResult",
    "FoldJob",
    "IncompleteCrossvalError",
    "fold_resources",
    "merge_crossval",
    "run_crossval",
    "summary_table",
    "train_fold",
]
