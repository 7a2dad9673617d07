"""The standardisation of a run's targets: the units its network reads and writes.

A network trained by MIMIR predicts each target as (value - mean) / sd of the training
values; `standardization.json` in the run folder records those means and sds so that the
network's output can be turned back into catalog units wherever the run is used.
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
        """Standardised (mean, log-variance) -> mean and sd in catalog units."""
        value = mean * self.sd + self.mean
        sd = np.exp(0.5 * log_var) * self.sd
        untrained = self.n_train == 0
        value[:, untrained] = np.nan
        sd[:, untrained] = np.nan
        return value, sd

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
