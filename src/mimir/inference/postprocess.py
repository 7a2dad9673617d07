"""Raw network output -> calibrated mean and standard deviation in each target's unit.

The single place where standardisation is undone and calibration applied, so prediction,
evaluation of modules and the legacy import agree to the last bit:

    mean = out_mean * sd + mean_std
    var  = exp(out_log_var) * sd^2 * calibration        sd_out = sqrt(var)

(with `sd`, `mean_std` the target's standardisation). A module built from a training run also
clamps the log-variance to the range training used, so module predictions equal the run's own;
imported published modules have no clamp, like the published code. Targets without training
values (n_train == 0) come out as NaN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mimir.inference.modules import ModuleSpec


def _as_float64(raw: Any) -> np.ndarray:
    if hasattr(raw, "detach"):  # a torch tensor, possibly on a GPU or in bfloat16
        raw = raw.detach().float().cpu().numpy()
    return np.asarray(raw, dtype=np.float64)


def postprocess(raw: Any, spec: ModuleSpec) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2T) interleaved (mean, log_var) output -> mean (N, T) and sd (N, T), float64."""
    output = _as_float64(raw)
    n_targets = len(spec.targets)
    if output.ndim != 2 or output.shape[1] != 2 * n_targets:
        raise ValueError(
            f"module {spec.name!r} has {n_targets} targets: expected a (N, {2 * n_targets}) output, got {output.shape}"
        )
    standardised_mean = output[:, 0::2]
    log_var = output[:, 1::2]
    if spec.log_var_range is not None:
        log_var = np.clip(log_var, spec.log_var_range[0], spec.log_var_range[1])
    offset = np.array([target.mean for target in spec.targets])
    scale = np.array([target.sd for target in spec.targets])
    calibration = np.array([target.calibration for target in spec.targets])
    mean = standardised_mean * scale + offset
    with np.errstate(over="ignore"):
        variance = np.exp(log_var) * scale**2 * calibration
    sd = np.sqrt(variance)
    untrained = np.array([target.n_train == 0 for target in spec.targets])
    mean[:, untrained] = np.nan
    sd[:, untrained] = np.nan
    return mean, sd


def uncertain_flags(sd: np.ndarray, spec: ModuleSpec) -> np.ndarray:
    """True where a predicted sd exceeds the 99th percentile seen in cross-validation.

    Targets without a recorded percentile are never flagged.
    """
    sd = np.asarray(sd, dtype=np.float64)
    threshold = np.array([np.inf if target.sd_p99 is None else target.sd_p99 for target in spec.targets])
    with np.errstate(invalid="ignore"):
        return sd > threshold
