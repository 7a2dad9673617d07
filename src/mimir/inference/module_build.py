"""Building a module from what training left: one run, several runs (seed members) or the
fold networks of a cross-validation, with the cross-validation's calibration factors, metrics and
uncertainty-flag thresholds, and the optional out-of-distribution description.

The module format itself (module.json, checks, writing, loading) is mimir.inference.modules;
this file only gathers what goes into it. Like that file it imports neither torch nor numpy at
import time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mimir.inference.modules import (
    MemberSpec,
    ModuleBuildError,
    ModuleMissingFileError,
    ModuleSpec,
    ModuleWeightsError,
    Provenance,
    TargetSpec,
    check_module_output,
    save_ensemble,
)
from mimir.runs.config import ConfigError, TrainConfig
from mimir.runs.layout import CrossvalFolder, RunFolder

if TYPE_CHECKING:
    import numpy as np
    import torch

    from mimir.inference.ood import OODDescription
    from mimir.runs.standardization import Standardization

logger = logging.getLogger(__name__)

#: Metrics columns of a cross-validation metrics table that describe the target, not the fit.
_DESCRIPTIVE_METRIC_COLUMNS = frozenset({"name", "module", "ukb_field", "unit", "kind", "target"})


def _read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ModuleMissingFileError(f"{path} is missing") from error
    except json.JSONDecodeError as error:
        raise ModuleBuildError(f"{path}: invalid JSON: {error}") from error


def _run_standardization(run: RunFolder) -> Standardization:
    from mimir.runs.standardization import StandardizationError, read_standardization

    try:
        return read_standardization(run.standardization)
    except FileNotFoundError as error:
        raise ModuleMissingFileError(f"{run.standardization} is missing") from error
    except StandardizationError as error:
        raise ModuleBuildError(str(error)) from error


def _run_config(run: RunFolder) -> TrainConfig:
    try:
        return TrainConfig.from_toml(run.config)
    except FileNotFoundError as error:
        raise ModuleMissingFileError(f"{run.config} is missing") from error
    except ConfigError as error:
        raise ModuleBuildError(str(error)) from error


def _config_record(config: TrainConfig) -> dict[str, Any]:
    """The configuration as its config.toml holds it: what module provenance records."""
    return tomllib.loads(config.to_toml())


@dataclass(frozen=True)
class CrossvalSummary:
    """Per target: calibration factor, metrics and 99th percentile of calibrated sd."""

    calibration: dict[str, float]
    metrics: dict[str, dict[str, float]]
    sd_p99: dict[str, float]
    source: str


def read_crossval(folder: Path | str, targets: Sequence[str]) -> CrossvalSummary:
    """Calibration, metrics and sd percentiles for `targets` from a cross-validation folder.

    Expects calibration.csv (target, variance_scale), and optionally metrics.csv (name, metric
    columns) and oof_predictions.csv ({name}, {name}_sd with the network's uncalibrated sd).
    """
    folder = Path(folder)
    layout = CrossvalFolder(folder)
    calibration = _read_calibration(layout, folder, targets)
    metrics = _read_metrics(layout, targets)
    sd_p99 = _read_flag_thresholds(layout, targets, calibration, metrics)
    return CrossvalSummary(calibration, metrics, sd_p99, str(folder))


def _read_calibration(layout: CrossvalFolder, folder: Path, targets: Sequence[str]) -> dict[str, float]:
    """Each target's variance scale; an unusable one (not finite, not positive) becomes 1.0."""
    import pandas as pd

    calibration_path = layout.calibration
    if not calibration_path.is_file():
        raise ModuleMissingFileError(f"{calibration_path} is missing: is {folder} a cross-validation folder?")
    table = pd.read_csv(calibration_path)
    if not {"target", "variance_scale"} <= set(table.columns):
        raise ModuleBuildError(f"{calibration_path}: needs columns target, variance_scale; has {list(table.columns)}")
    scales = dict(zip(table["target"].astype(str), pd.to_numeric(table["variance_scale"], errors="coerce"), strict=True))
    calibration: dict[str, float] = {}
    for name in targets:
        if name not in scales:
            raise ModuleBuildError(f"{calibration_path} has no row for target {name}: was it cross-validated with this module?")
        factor = float(scales[name])
        if not (math.isfinite(factor) and factor > 0):
            logger.warning("target %s: calibration factor %s is unusable; 1.0 is used", name, factor)
            factor = 1.0
        calibration[name] = factor
    return calibration


def _read_metrics(layout: CrossvalFolder, targets: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each target's finite cross-validation metrics (not the descriptive or published columns)."""
    import pandas as pd

    metrics: dict[str, dict[str, float]] = {}
    metrics_path = layout.metrics
    if not metrics_path.is_file():
        logger.warning("%s is missing: the module records no cross-validation metrics", metrics_path)
        return metrics
    table = pd.read_csv(metrics_path)
    if "name" not in table.columns:
        raise ModuleBuildError(f"{metrics_path}: needs a name column")
    for _, row in table[table["name"].astype(str).isin(targets)].iterrows():
        values = {}
        for column, value in row.items():
            if column in _DESCRIPTIVE_METRIC_COLUMNS or str(column).startswith(("cv_", "test_")):
                continue  # descriptive, or the catalog's published numbers
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                values[str(column)] = number
        metrics[str(row["name"])] = values
    return metrics


def _read_flag_thresholds(
    layout: CrossvalFolder, targets: Sequence[str], calibration: Mapping[str, float], metrics: dict[str, dict[str, float]]
) -> dict[str, float]:
    """Each target's uncertainty-flag threshold (99th percentile of the calibrated out-of-fold sd),
    kept only where a threshold from the other folds flags few enough of a held-out fold's exams;
    that held-out rate is added to the target's metrics."""
    import numpy as np
    import pandas as pd

    from mimir.inference.table import sd_column

    sd_p99: dict[str, float] = {}
    oof_path = layout.oof_predictions
    if not oof_path.is_file():
        logger.warning("%s is missing: no sd percentile for the uncertainty flag", oof_path)
        return sd_p99
    table = pd.read_csv(oof_path)
    folds = table["fold"].to_numpy() if "fold" in table.columns else None
    for name in targets:
        column = sd_column(name)
        if column not in table.columns or _is_binary(name):  # a probability is never flagged
            continue
        sd = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64) * math.sqrt(calibration[name])
        known = np.isfinite(sd)
        if not known.any():
            continue
        rate = None if folds is None else held_out_flag_rate(sd[known], folds[known])
        if rate is not None:
            metrics.setdefault(name, {})["uncertain_rate_held_out"] = rate
        if rate is not None and rate > MAX_HELD_OUT_FLAG_RATE:
            logger.warning(
                "target %s: no uncertainty flag: a threshold from the other folds flags %.1f %% of a held-out "
                "fold's exams (at most %.0f %% allowed): the fold networks' sds differ in scale, so no "
                "threshold carries over to the final network", name, 100 * rate, 100 * MAX_HELD_OUT_FLAG_RATE,
            )
            continue
        sd_p99[name] = float(np.percentile(sd[known], FLAG_PERCENTILE))
    return sd_p99


def _is_binary(name: str) -> bool:
    from mimir.targets.catalog import get_target

    try:
        return get_target(name).is_binary
    except KeyError:
        return False


#: The uncertainty flag's threshold: this percentile of a target's calibrated out-of-fold sds.
FLAG_PERCENTILE = 99.0
#: A target gets the flag only where, in cross-validation, thresholds taken from the other folds
#: flag at most this share of the held-out folds' exams (1 % is nominal). More means the fold
#: networks' sds differ in scale, and the final network's would too.
MAX_HELD_OUT_FLAG_RATE = 0.03


def held_out_flag_rate(sd: np.ndarray, folds: np.ndarray) -> float | None:
    """Share of exams whose sd exceeds the FLAG_PERCENTILE of the other folds' sds: the flag's
    rate on exams a network has not seen, measured with networks other than the one the
    threshold came from (as the final module's are). None with fewer than two folds."""
    import numpy as np

    flagged = 0
    names = np.unique(folds)
    if names.size < 2:
        return None
    for fold in names:
        held = folds == fold
        flagged += int(np.sum(sd[held] > np.percentile(sd[~held], FLAG_PERCENTILE)))
    return flagged / sd.size


def build_module(
    run: Path | str,
    crossval: Path | str | None,
    out: Path | str,
    name: str | None = None,
    *,
    overwrite: bool = False,
    images: Path | str | None = None,
    ood_features: str | None = None,
    held_out_images: Path | str | None = None,
) -> Path:
    """A module from a finished training run and, ideally, its cross-validation folder
    (`images`, `held_out_images`: see `build_ensemble`)."""
    return build_ensemble(
        [run], crossval, out, name, overwrite=overwrite, images=images, ood_features=ood_features,
        held_out_images=held_out_images,
    )


def build_module_from_crossval(
    crossval: Path | str, out: Path | str, name: str | None = None, *, ensemble: bool = True, overwrite: bool = False
) -> Path:
    """A format 2 module packing every fold network of a finished cross-validation (in fold order),
    calibrated with that cross-validation's factors (docs/ensembles.md says why they apply)."""
    layout = CrossvalFolder(Path(crossval))
    if not ensemble:
        raise ModuleBuildError(
            f"{layout.path}: a cross-validation has no final network; pack its fold networks as an ensemble "
            "(ensemble=True, `--ensemble`) or build from a training run with this folder for calibration"
        )
    try:
        folds = int(json.loads(layout.splits.read_text(encoding="utf-8"))["folds"])
    except FileNotFoundError as error:
        raise ModuleMissingFileError(f"{layout.splits} is missing: is {layout.path} a cross-validation folder?") from error
    except (KeyError, TypeError, ValueError) as error:
        raise ModuleBuildError(f"{layout.splits}: cannot read the number of folds: {error}") from error
    incomplete = [fold for fold in range(folds) if not layout.fold(fold).is_complete()]
    if incomplete:
        raise ModuleBuildError(f"{layout.path}: folds {incomplete} are not finished; run the cross-validation to the end first")
    return build_ensemble([layout.fold(fold).path for fold in range(folds)], layout.path, out, name, overwrite=overwrite)


def _catalog_facts(target_name: str) -> tuple[int | None, str, str, bool]:
    from mimir.targets.catalog import get_target

    try:
        known = get_target(target_name)
        return known.ukb_field, known.unit, known.kind, True
    except KeyError:
        logger.warning("target %s is not in the catalog; its unit is unknown", target_name)
        return None, "", "continuous", False


def build_ensemble(
    runs: Sequence[Path | str],
    crossval: Path | str | None,
    out: Path | str,
    name: str | None = None,
    *,
    overwrite: bool = False,
    images: Path | str | None = None,
    ood_features: str | None = None,
    held_out_images: Path | str | None = None,
) -> Path:
    """A module from one finished training run (format 1) or several (format 2, one member each:
    fold networks or networks trained with different seeds), ideally with a cross-validation
    folder for calibration factors, metrics and the uncertainty flag's threshold.

    The runs must share architecture, input pooling, log-variance clamp and targets (in order);
    each member keeps its own standardisation.

    `images`, the image cache the runs were trained on (a run folder does not record where its
    images were), adds the out-of-distribution description (`mimir.inference.ood`, features
    `ood_features`, default DEFAULT_FEATURES), computed with the first run's network: that run's
    validation exams (val_predictions.csv) set the flag's threshold, the cache's other images are
    its training exams. `held_out_images`, a cache of more exams of the same population that no
    run trained on, joins the validation exams in setting the threshold.
    """
    out = check_module_output(out, overwrite=overwrite)
    if not runs:
        raise ModuleBuildError("no training run given")
    if held_out_images is not None and images is None:
        raise ModuleBuildError("held-out images only set the OOD threshold: name the training cache as well")
    folders = [RunFolder(run) for run in runs]
    configs, standardizations = _read_runs(folders)
    states = _read_weights(folders)
    first = standardizations[0]
    if crossval is None:
        logger.warning(
            "no cross-validation folder given: calibration factors are 1.0 and no metrics are recorded; "
            "refit the factors on labelled exams no network saw with `mimir module calibrate` (networks "
            "trained on all their subjects can be far overconfident: docs/ensembles.md)"
        )
        summary = CrossvalSummary({}, {}, {}, "")
    else:
        summary = read_crossval(Path(crossval), list(first.targets))
    members = _member_specs(folders, standardizations) if len(folders) > 1 else ()
    spec = ModuleSpec(
        name=name or first.module,
        architecture=configs[0].architecture,
        targets=_target_specs(standardizations, summary),
        provenance=_training_provenance(folders, configs[0], summary, members, calibrated=crossval is not None),
        input_pool=configs[0].input_pool,
        log_var_range=configs[0].log_var_range,
        members=members,
    )
    ood = None
    if images is not None:
        held_path = Path(held_out_images) if held_out_images is not None else None
        ood = describe_run_images(folders[0], spec, states[0], Path(images), ood_features, held_path)
        spec = dataclasses.replace(spec, provenance=dataclasses.replace(spec.provenance, data={
            **spec.provenance.data, "ood_images": Path(images).resolve().name,
            **({"ood_held_out_images": held_path.resolve().name} if held_path is not None else {}),
        }))
    return save_ensemble(spec, states, out, overwrite=overwrite, ood=ood)


def _read_runs(folders: Sequence[RunFolder]) -> tuple[list[TrainConfig], list[Standardization]]:
    """Each finished run's configuration and standardisation; the runs must fit in one module."""
    configs, standardizations = [], []
    for run_folder in folders:
        if not run_folder.path.is_dir():
            raise ModuleMissingFileError(f"training run folder not found: {run_folder.path}")
        if not run_folder.weights.is_file():
            raise ModuleMissingFileError(f"{run_folder.weights} is missing: has the training run finished?")
        configs.append(_run_config(run_folder))
        standardizations.append(_run_standardization(run_folder))
    first_config, first = configs[0], standardizations[0]
    for run_folder, config, standardization in zip(folders[1:], configs[1:], standardizations[1:], strict=True):
        mine = (config.architecture, config.input_pool, config.log_var_range, standardization.targets)
        theirs = (first_config.architecture, first_config.input_pool, first_config.log_var_range, first.targets)
        if mine != theirs:
            raise ModuleBuildError(
                f"{run_folder.path} cannot join {folders[0].path} in one module: architecture, input pool, "
                f"log-variance clamp and targets must agree ({mine[:3]} and {len(mine[3])} targets vs "
                f"{theirs[:3]} and {len(theirs[3])} targets)"
            )
    return configs, standardizations


def _read_weights(folders: Sequence[RunFolder]) -> list[dict[str, torch.Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    states = []
    for run_folder in folders:
        try:
            states.append(load_file(str(run_folder.weights)))
        except (SafetensorError, OSError, ValueError) as error:
            raise ModuleWeightsError(f"{run_folder.weights} cannot be read: {error}") from error
    return states


def _target_specs(standardizations: Sequence[Standardization], summary: CrossvalSummary) -> tuple[TargetSpec, ...]:
    """The targets in the first run's order and standardisation, with what the cross-validation
    measured; n_train is the fewest training values any member had."""
    first = standardizations[0]
    targets = []
    for index, target_name in enumerate(first.targets):
        field_id, unit, kind, in_catalog = _catalog_facts(target_name)
        targets.append(
            TargetSpec(
                name=target_name, ukb_field=field_id, unit=unit, kind=kind,
                mean=float(first.mean[index]), sd=float(first.sd[index]),
                calibration=summary.calibration.get(target_name, 1.0),
                in_catalog=in_catalog,
                n_train=min(int(standardization.n_train[index]) for standardization in standardizations),
                cv_metrics=summary.metrics.get(target_name, {}),
                sd_p99=summary.sd_p99.get(target_name),
            )
        )
    return tuple(targets)


def _member_specs(folders: Sequence[RunFolder], standardizations: Sequence[Standardization]) -> tuple[MemberSpec, ...]:
    return tuple(
        MemberSpec(
            mean=tuple(float(value) for value in standardization.mean),
            sd=tuple(float(value) for value in standardization.sd),
            n_train=tuple(int(value) for value in standardization.n_train),
            source=run_folder.path.resolve().name,
        )
        for run_folder, standardization in zip(folders, standardizations, strict=True)
    )


def _training_provenance(
    folders: Sequence[RunFolder], config: TrainConfig, summary: CrossvalSummary, members: Sequence[MemberSpec],
    *, calibrated: bool,
) -> Provenance:
    """The first run's configuration, data summary and record, the folders it came from, and notes."""
    notes: list[str] = []
    if not calibrated:
        notes.append("not calibrated: built without cross-validation (factors 1.0)")
    if members:
        notes.append(
            f"ensemble of {len(members)} networks: the calibration factor (fitted on single networks' out-of-fold "
            "predictions) scales the mixture's variance (docs/ensembles.md)"
        )
    data_summary_path = folders[0].data_summary
    run_record_path = folders[0].record
    return Provenance(
        source="training",
        config=_config_record(config),
        data={
            "training": _read_json_file(data_summary_path) if data_summary_path.is_file() else {},
            "run": _read_json_file(run_record_path) if run_record_path.is_file() else {},
            "run_folder": folders[0].path.resolve().name,
            "crossval_folder": Path(summary.source).resolve().name if summary.source else None,
            **({"member_run_folders": [member.source for member in members]} if members else {}),
        },
        notes=tuple(notes),
    )


def describe_run_images(
    run_folder: RunFolder, spec: ModuleSpec, state: Mapping[str, torch.Tensor], images: Path, features: str | None,
    held_out_images: Path | None = None,
) -> OODDescription:
    """The OOD description of the cache a run was trained on, its validation exams (and the
    images of `held_out_images`, which no run trained on) held out."""
    import pandas as pd

    from mimir.imaging.cache import ExamId, cached_exams
    from mimir.inference.ood import DEFAULT_FEATURES, OODError, describe_cache, feature_parts
    from mimir.network import MeanVarianceResNet

    features = features or DEFAULT_FEATURES
    try:
        feature_parts(features)
    except OODError as error:
        raise ModuleBuildError(str(error)) from error
    if not images.is_dir():
        raise ModuleMissingFileError(f"image cache not found: {images}")
    exams = [(exam.path.stem, exam.path) for exam in cached_exams(images)]
    held_out: set[str] = set()
    if run_folder.val_predictions.is_file():
        validation = pd.read_csv(run_folder.val_predictions, usecols=["eid", "instance"])
        keys = set(zip(validation["eid"].astype(int), validation["instance"].astype(int), strict=True))
        for stem, _ in exams:
            exam_id = ExamId.from_stem(stem)
            if (exam_id.eid, exam_id.instance) in keys:
                held_out.add(stem)
    else:
        logger.warning("%s has no validation exams: the OOD threshold comes from cross-fitted training distances",
                       run_folder.path)
    extra: list[tuple[str, Path]] = []
    if held_out_images is not None:
        if not held_out_images.is_dir():
            raise ModuleMissingFileError(f"held-out image cache not found: {held_out_images}")
        extra = [(exam.path.stem, exam.path) for exam in cached_exams(held_out_images)]
        trained_on = {stem for stem, _ in exams} - held_out
        shared = sorted(trained_on & {stem for stem, _ in extra})
        if shared:
            raise ModuleBuildError(
                f"{held_out_images}: {len(shared)} exams (e.g. {shared[0]}) are also training exams in {images}; "
                "held-out exams must be exams the network never trained on"
            )
    network = MeanVarianceResNet(spec.architecture, len(spec.targets), spec.input_pool)
    network.load_state_dict(dict(state), strict=True)
    try:
        return describe_cache(network.eval(), exams, held_out, features, held_out_exams=extra)
    except OODError as error:
        raise ModuleBuildError(f"{images}: {error}") from error
