"""Raw network output -> calibrated mean and standard deviation in each target's unit.

The single place where a module's raw outputs become values: standardisation is undone by
`mimir.runs.standardization.to_units` (the one de-standardisation, shared with training), with
each member network's own standardisation, and the calibration is applied here:

    mean = out_mean * sd + mean_std
    var  = exp(out_log_var) * sd^2 * calibration        sd_out = sqrt(var)

(with `sd`, `mean_std` the member's standardisation). A module built from a training run also
clamps the log-variance to the range training used, so module predictions equal the run's own;
imported published modules have no clamp, like the published code. Targets without training
values (n_train == 0) come out as NaN.

An ensemble (a module with several member networks, format 2) predicts the members' equally
weighted Gaussian mixture, summarised by its mean and variance:

    mean = mean_m(mean_m)                 aleatoric = mean_m(var_m)     epistemic = var_m(mean_m)
    var  = calibration * (aleatoric + epistemic)

(`var_m` over members with divisor M). The calibration factor scales both parts, so the
reported sd_aleatoric^2 + sd_epistemic^2 = sd^2. One member gives exactly the formula above
with an epistemic sd of 0.

What a reader is shown of that Gaussian (`reported_values`) depends on the target's interval
kind in the catalog (`mimir.targets.catalog.interval_kind`, docs/intervals.md): the mean and
95 % interval; for a quantity that cannot be negative, both bounded at 0 (the bounded interval
holds the true value whenever the unbounded one does); for a binary target, the mean clipped to
[0, 1] as the probability of the positive class, without sd or interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mimir.runs.standardization import to_units
from mimir.targets.catalog import INTERVAL_BOUNDED, INTERVAL_PROBABILITY, interval_kind

if TYPE_CHECKING:
    from mimir.inference.modules import ModuleSpec


def _as_float64(raw: Any) -> np.ndarray:
    if hasattr(raw, "detach"):  # a torch tensor, possibly on a GPU or in bfloat16
        raw = raw.detach().float().cpu().numpy()
    return np.asarray(raw, dtype=np.float64)


def member_units(raw: Any, spec: ModuleSpec, member: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One member's (N, 2T) interleaved (mean, log_var) output -> uncalibrated mean and variance
    (N, T) in target units, float64, with that member's standardisation."""
    output = _as_float64(raw)
    n_targets = len(spec.targets)
    if output.ndim != 2 or output.shape[1] != 2 * n_targets:
        raise ValueError(
            f"module {spec.name!r} has {n_targets} targets: expected a (N, {2 * n_targets}) output, got {output.shape}"
        )
    offset, scale, untrained = spec.member_standardization(member)
    return to_units(output[:, 0::2], output[:, 1::2], offset, scale, untrained=untrained, log_var_range=spec.log_var_range)


def _calibration(spec: ModuleSpec) -> np.ndarray:
    return np.array([target.calibration for target in spec.targets])


def postprocess(raw: Any, spec: ModuleSpec, member: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One member network's (N, 2T) output -> calibrated mean (N, T) and sd (N, T), float64."""
    mean, variance = member_units(raw, spec, member)
    return mean, np.sqrt(variance * _calibration(spec))


@dataclass(frozen=True)
class MemberMixture:
    """(N, T) arrays: the calibrated mixture of a module's members (one member: that network)."""

    mean: np.ndarray
    sd: np.ndarray  # total: sqrt(sd_aleatoric^2 + sd_epistemic^2)
    sd_aleatoric: np.ndarray  # the members' mean predicted variance, calibrated
    sd_epistemic: np.ndarray  # the spread of the members' means, calibrated (0 for one member)

    @property
    def n_rows(self) -> int:
        return self.mean.shape[0]


def combine_members(raws: Sequence[Any], spec: ModuleSpec) -> MemberMixture:
    """The raw outputs of members 0..M-1 (in order) on one batch -> their calibrated mixture."""
    if not raws:
        raise ValueError(f"module {spec.name!r}: no member outputs to combine")
    calibration = _calibration(spec)
    if len(raws) == 1:
        mean, variance = member_units(raws[0], spec, 0)
        sd = np.sqrt(variance * calibration)
        return MemberMixture(mean, sd, sd.copy(), np.where(np.isnan(sd), np.nan, 0.0))
    units = [member_units(raw, spec, member) for member, raw in enumerate(raws)]
    means = np.stack([mean for mean, _ in units])
    variances = np.stack([variance for _, variance in units])
    aleatoric = variances.mean(axis=0)
    epistemic = means.var(axis=0)
    return MemberMixture(
        means.mean(axis=0),
        np.sqrt((aleatoric + epistemic) * calibration),
        np.sqrt(aleatoric * calibration),
        np.sqrt(epistemic * calibration),
    )


#: Two-sided 95 % normal quantile: interval = mean +- Z95 * sd.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class ReportedValues:
    """(N, T) arrays as the predictions table shows them (NaN where a value does not apply)."""

    mean: np.ndarray
    sd: np.ndarray
    low: np.ndarray
    high: np.ndarray


def target_intervals(spec: ModuleSpec) -> list[str]:
    """The catalog's interval kind of each of the module's targets, from their kind and unit."""
    return [interval_kind(target.kind, target.unit) for target in spec.targets]


def reported_values(mean: np.ndarray, sd: np.ndarray, spec: ModuleSpec) -> ReportedValues:
    """The calibrated Gaussian (`postprocess`) as a reader gets it, per target's interval kind.

    normal: mean +- Z95 * sd. Bounded at 0: the same with mean and bounds raised to 0 where
    they fall below it; only values at or above 0 are possible, so the interval keeps its
    coverage. Probability: the mean clipped to [0, 1] (the network regresses the 0/1 label,
    so its mean estimates the share of positives among exams like this one); no sd or interval.
    """
    mean = np.array(mean, dtype=np.float64)
    sd = np.array(sd, dtype=np.float64)
    low, high = mean - Z95 * sd, mean + Z95 * sd
    for column, interval in enumerate(target_intervals(spec)):
        if interval == INTERVAL_PROBABILITY:
            mean[:, column] = np.clip(mean[:, column], 0.0, 1.0)
            sd[:, column] = low[:, column] = high[:, column] = np.nan
        elif interval == INTERVAL_BOUNDED:
            for values in (mean, low, high):
                values[:, column] = np.maximum(values[:, column], 0.0)
    return ReportedValues(mean, sd, low, high)


def uncertain_flags(mean: np.ndarray, sd: np.ndarray, spec: ModuleSpec) -> np.ndarray:
    """True where a prediction deserves a second look (docs/intervals.md):

    - its sd exceeds the target's threshold from cross-validation (`TargetSpec.sd_p99`, the 99th
      percentile of the calibrated out-of-fold sds); targets without one are not flagged so;
    - a target that cannot be negative has its whole 95 % interval below 0: the network is far
      outside what it learnt, however small its sd.

    Binary targets are never flagged: their probability itself says how sure the network is.
    """
    mean = np.asarray(mean, dtype=np.float64)
    sd = np.asarray(sd, dtype=np.float64)
    intervals = target_intervals(spec)
    threshold = np.array([
        np.inf if target.sd_p99 is None or interval == INTERVAL_PROBABILITY else target.sd_p99
        for target, interval in zip(spec.targets, intervals, strict=True)
    ])
    bounded = np.array([interval == INTERVAL_BOUNDED for interval in intervals])
    with np.errstate(invalid="ignore"):
        return (sd > threshold) | (bounded & (mean + Z95 * sd < 0.0))
