"""The standardisation of a run's targets: the units its network reads and writes.

A network trained by MIMIR predicts each target as (value - mean) / sd of the training
values; `standardization.json` in the run folder records those means and sds so that the
network's output can be turned back into catalog units wherever the run is used.

`to_units` is the one de-standardisation in MIMIR: training's predictions
(`Standardization.invert`) and every module's (`mimir.inference.postprocess`) call it, so a run
and the module built from it agree to the last bit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimir.errors import MimirError

logger = logging.getLogger(__name__)


class StandardizationError(MimirError, ValueError):
    """A standardization.json that cannot be read back."""


def to_units(
    standardised_mean: np.ndarray,
    log_var: np.ndarray,
    mean: np.ndarray,
    sd: np.ndarray,
    *,
    untrained: np.ndarray | None = None,
    log_var_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Standardised (N, T) means and log-variances -> means and variances (N, T) in target units.

        value = standardised_mean * sd + mean        variance = exp(log_var) * sd^2

    float64 throughout; the log-variance is clamped to `log_var_range` first when given (what
    training used); columns marked `untrained` (no training values) are NaN. Calibration (a
    variance scale) is applied by the caller to the variance returned here.
    """
    log_var = np.asarray(log_var, dtype=np.float64)
    if log_var_range is not None:
        log_var = np.clip(log_var, log_var_range[0], log_var_range[1])
    value = np.asarray(standardised_mean, dtype=np.float64) * sd + mean
    with np.errstate(over="ignore"):
        variance = np.exp(log_var) * sd**2
    if untrained is not None:
        value[:, untrained] = np.nan
        variance[:, untrained] = np.nan
    return value, variance


@dataclass
class Standardization:
    """Training mean and sample sd per target; the network works in these units."""

    module: str
    targets: tuple[str, ...]
    mean: np.ndarray
    sd: np.ndarray
    n_train: np.ndarray  # known training values per target; 0 -> predictions are NaN

    @classmethod
    def fit(cls, module: str, targets: Sequence[str], values: np.ndarray) -> Standardization:
        known = ~np.isnan(values)
        n_known = known.sum(axis=0)
        mean = np.zeros(len(targets))
        sd = np.ones(len(targets))
        for column, count in enumerate(n_known):
            column_values = values[known[:, column], column]
            if count >= 1:
                mean[column] = column_values.mean()
            if count >= 2 and column_values.std(ddof=1) > 0:
                sd[column] = column_values.std(ddof=1)
        for name, count in zip(targets, n_known, strict=True):
            if count < 2:
                logger.warning("target %s has %d known training values; its standardisation is a placeholder", name, count)
        return cls(module, tuple(targets), mean, sd, n_known.astype(int))

    def apply(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean) / self.sd).astype(np.float32)

    def invert(self, mean: np.ndarray, log_var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Standardised (mean, log-variance) -> mean and sd in catalog units (`to_units`)."""
        value, variance = to_units(mean, log_var, self.mean, self.sd, untrained=self.n_train == 0)
        return value, np.sqrt(variance)

    def to_json(self) -> str:
        return json.dumps(
            {
                "module": self.module,
                "targets": list(self.targets),
                "mean": self.mean.tolist(),
                "sd": self.sd.tolist(),
                "n_train": self.n_train.tolist(),
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Standardization:
        data = json.loads(text)
        return cls(
            data["module"],
            tuple(data["targets"]),
            np.asarray(data["mean"], dtype=np.float64),
            np.asarray(data["sd"], dtype=np.float64),
            np.asarray(data["n_train"], dtype=int),
        )


def read_standardization(path: Path) -> Standardization:
    """A run's standardization.json; a missing file is FileNotFoundError, a malformed one
    StandardizationError naming what is wrong."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        standardization = Standardization.from_json(text)
    except json.JSONDecodeError as error:
        raise StandardizationError(f"{path}: invalid JSON: {error}") from error
    except (KeyError, TypeError, ValueError) as error:
        raise StandardizationError(
            f"{path}: expected module, targets, mean, sd and n_train lists: {type(error).__name__}: {error}"
        ) from error
    shape = (len(standardization.targets),)
    arrays = (standardization.mean, standardization.sd, standardization.n_train)
    if not standardization.targets or any(array.shape != shape for array in arrays):
        raise StandardizationError(f"{path}: targets, mean, sd and n_train must be non-empty lists of one length")
    return standardization
