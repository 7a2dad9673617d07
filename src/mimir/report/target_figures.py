"""The figures of one target: agreement with Bland-Altman, calibration, sparsification.

A binary target (sex) gets no calibration curve: the coverage of Gaussian intervals around a
probability is not a property anyone reads for a 0/1 outcome.

Shared by the cross-validation report (out-of-fold predictions, before and after
calibration) and the evaluation report (predictions against a later reference release).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mimir.evaluation.calibration import calibration_curve, sparsification_curve
from mimir.report.plots import agreement_plot, calibration_plot, sparsification_plot


def file_stem(name: str) -> str:
    """A file-name-safe version of a target name."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def target_figures(
    name: str,
    unit: str,
    reference: np.ndarray,
    mean: np.ndarray,
    sd: np.ndarray | None,
    folder: Path,
    *,
    binary: bool,
    sd_before_calibration: np.ndarray | None = None,
) -> list[Path]:
    """Write the target's PNGs into `folder`; curves only when there are standard deviations.

    `binary` is the catalog's `Target.is_binary`. `sd` is the standard deviation as reported
    (calibrated where calibration was applied); `sd_before_calibration`, when given, adds the
    curve before calibration for comparison.
    """
    stem = file_stem(name)
    paths = [
        agreement_plot(reference, mean, sd=sd, name=name, unit=unit, binary=binary, path=folder / f"{stem}_agreement.png")
    ]
    if sd is None or not np.isfinite(sd).any():
        return paths
    if not binary:
        paths.append(_calibration_figure(name, reference, mean, sd, sd_before_calibration, folder / f"{stem}_calibration.png"))
    sparsification = sparsification_curve(mean, sd, reference)
    paths.append(
        sparsification_plot(
            sparsification.fractions, sparsification.by_uncertainty, sparsification.oracle,
            name=name, unit=unit, path=folder / f"{stem}_sparsification.png",
        )
    )
    return paths


def _calibration_figure(
    name: str, reference: np.ndarray, mean: np.ndarray, sd: np.ndarray, sd_before: np.ndarray | None, path: Path
) -> Path:
    """The calibration curve as reported, and before calibration when that sd is known."""
    reported = calibration_curve(mean, sd, reference)
    if sd_before is None:
        return calibration_plot(
            reported.expected, reported.observed, None, name=name, path=path,
            auce_before=reported.auce, labels=("as predicted", ""),
        )
    before = calibration_curve(mean, sd_before, reference)
    return calibration_plot(
        before.expected, before.observed, reported.observed, name=name, path=path,
        auce_before=before.auce, auce_after=reported.auce,
    )
