"""Refit a module's calibration factors on exams that none of its networks trained on.

A cross-validation calibrates single networks honestly (each exam predicted by the fold network
that did not see it). An ensemble of the fold networks has no such out-of-fold prediction: every
cross-validated exam trained K-1 of its members, and applying the single networks' factor to
the mixture, which adds the members' disagreement, gives intervals that are too wide
(docs/ensembles.md). A module used on another study (another scanner, population or protocol)
may be miscalibrated the other way. Both are fixed the same way: predict labelled exams that the
module never saw and refit, per target, the variance scale that makes the module's own
calibrated Gaussians fit them best (the NLL optimum, `fit_variance_scale`, as in
cross-validation). The new factor is the old one times that scale; the uncertainty flag's sd
threshold moves with the sds it compares against.

The exams used here must stay out of any later evaluation of the module: coverage measured on
them is in-sample by construction.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mimir.errors import MimirError
from mimir.evaluation.calibration import fit_variance_scale
from mimir.inference.modules import ModuleSpec, TargetSpec, now_iso, read_spec, save_with_spec
from mimir.inference.postprocess import Z95
from mimir.targets.catalog import INTERVAL_PROBABILITY, Target, catalog, interval_kind

if TYPE_CHECKING:
    import pandas as pd

    from mimir.inference.predict import PredictOptions

logger = logging.getLogger(__name__)

#: Fewer reference values than this leave a target's factor as it was: a variance estimated
#: from a handful of errors is too noisy to replace one fitted on a whole cross-validation.
MIN_EXAMS = 20


class RecalibrationError(MimirError, ValueError):
    """Nothing to recalibrate on: no target of the module with enough reference values."""


@dataclass(frozen=True)
class TargetRecalibration:
    """What recalibration did to one target (factor 1 and a reason when it was left alone)."""

    name: str
    exams: int
    scale: float  # the new calibration factor / the old one
    calibration_before: float
    calibration_after: float
    coverage_before: float  # share of reference values inside the 95 % interval, on these exams
    coverage_after: float  # the same after rescaling: in-sample, close to 95 % by construction
    skipped: str = ""


@dataclass
class Recalibration:
    """The recalibrated module and, per target, what changed."""

    out: Path
    spec: ModuleSpec
    targets: list[TargetRecalibration] = field(default_factory=list)

    @property
    def changed(self) -> list[TargetRecalibration]:
        return [target for target in self.targets if not target.skipped]


def _coverage(mean: np.ndarray, sd: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean(np.abs(reference - mean) <= Z95 * sd))


def _catalog_targets(spec: ModuleSpec) -> dict[str, Target]:
    """The module's targets that the catalog knows (only those can be read from a reference)."""
    known = {entry.name: entry for entry in catalog()}
    return {name: known[name] for name in spec.target_names if name in known}


def _refit_target(
    target: TargetSpec, entry: Target | None, predictions: pd.DataFrame, reference: pd.DataFrame, min_exams: int
) -> TargetRecalibration:
    from mimir.evaluation.evaluate import REFERENCE_SUFFIX, column_values, paired_table
    from mimir.inference.table import sd_column

    def unchanged(exams: int, why: str) -> TargetRecalibration:
        return TargetRecalibration(target.name, exams, 1.0, target.calibration, target.calibration, math.nan, math.nan, why)

    if interval_kind(target.kind, target.unit) == INTERVAL_PROBABILITY:
        return unchanged(0, "a probability has no variance to calibrate")
    if entry is None:
        return unchanged(0, "not a catalog target: the reference cannot be read for it")
    if target.name not in reference.columns:
        return unchanged(0, "no column in the reference")
    if sd_column(target.name) not in predictions.columns:
        return unchanged(0, "the module gave it no sd")
    joined = paired_table(predictions, reference, [entry])
    mean, sd = column_values(joined, target.name), column_values(joined, sd_column(target.name))
    truth = column_values(joined, target.name + REFERENCE_SUFFIX)
    usable = np.isfinite(mean) & np.isfinite(sd) & (sd > 0) & np.isfinite(truth)
    mean, sd, truth = mean[usable], sd[usable], truth[usable]
    if len(truth) < min_exams:
        return unchanged(len(truth), f"{len(truth)} exams with a reference value, fewer than {min_exams}")
    scale = fit_variance_scale(mean, sd, truth)
    if not (math.isfinite(scale) and scale > 0):
        return unchanged(len(truth), f"the fitted scale is unusable ({scale})")
    return TargetRecalibration(
        target.name, len(truth), scale, target.calibration, target.calibration * scale,
        _coverage(mean, sd, truth), _coverage(mean, sd * math.sqrt(scale), truth),
    )


def recalibrated_spec(
    spec: ModuleSpec, predictions: pd.DataFrame, reference: pd.DataFrame, *, min_exams: int = MIN_EXAMS, source: str = ""
) -> tuple[ModuleSpec, list[TargetRecalibration]]:
    """`spec` with each target's calibration refitted on `predictions` (this module's, of exams
    it never trained on) against `reference`, and the refit recorded in its provenance."""
    entries = _catalog_targets(spec)
    refits = [_refit_target(target, entries.get(target.name), predictions, reference, min_exams) for target in spec.targets]
    if not any(not refit.skipped for refit in refits):
        reasons = "; ".join(f"{refit.name}: {refit.skipped}" for refit in refits)
        raise RecalibrationError(f"module {spec.name!r}: no target could be recalibrated ({reasons})")
    targets = tuple(
        dataclasses.replace(
            target, calibration=refit.calibration_after,
            sd_p99=None if target.sd_p99 is None else target.sd_p99 * math.sqrt(refit.scale),
        )
        for target, refit in zip(spec.targets, refits, strict=True)
    )
    record = {
        "created": now_iso(),
        "source": source,
        "method": "variance scale refitted (Gaussian NLL optimum) on exams none of the networks trained on",
        "targets": {
            refit.name: {
                "exams": refit.exams, "scale": refit.scale, "calibration_before": refit.calibration_before,
                "calibration_after": refit.calibration_after, "coverage_before": refit.coverage_before,
                "skipped": refit.skipped,
            }
            for refit in refits
        },
    }
    earlier = spec.provenance.data.get("recalibrations", [])
    data = {**spec.provenance.data, "recalibrations": [*earlier, record]}
    provenance = dataclasses.replace(spec.provenance, data=data)
    return dataclasses.replace(spec, targets=targets, provenance=provenance), refits


def recalibrate_module(
    module: Path | str,
    inputs: Sequence[str | Path],
    reference: Path | str,
    out: Path | str,
    *,
    options: PredictOptions | None = None,
    min_exams: int = MIN_EXAMS,
    instance: int = 2,
    overwrite: bool = False,
) -> Recalibration:
    """Predict `inputs` (zips, list files or a cache folder, as `mimir predict` takes them) with
    `module`, refit its calibration against `reference` (a targets table, or a UK Biobank export
    read for imaging visit `instance`) and write the recalibrated module to `out`; weights are copied unchanged."""
    from mimir.inference.modules import check_module_output
    from mimir.inference.predict import PredictOptions, run_prediction
    from mimir.targets.exports import read_reference

    module, out = Path(module), check_module_output(out, overwrite=overwrite)
    spec = read_spec(module)
    wanted = list(_catalog_targets(spec).values())
    table = read_reference(reference, instance=instance, targets=wanted or None)
    options = dataclasses.replace(options or PredictOptions(), column_names="mimir")
    predictions = run_prediction(inputs, [module], options).table
    new_spec, refits = recalibrated_spec(spec, predictions, table, min_exams=min_exams, source=str(reference))
    for refit in refits:
        if refit.skipped:
            logger.warning("%s: calibration left at %.3f (%s)", refit.name, refit.calibration_before, refit.skipped)
        else:
            logger.info(
                "%s: %d exams, calibration %.3f -> %.3f (95 %% coverage on them %.1f %% -> %.1f %%)",
                refit.name, refit.exams, refit.calibration_before, refit.calibration_after,
                100 * refit.coverage_before, 100 * refit.coverage_after,
            )
    written = save_with_spec(module, new_spec, out, overwrite=overwrite)
    return Recalibration(written, new_spec, refits)
