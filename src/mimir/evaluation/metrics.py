"""Agreement metrics between predictions and a reference, as reported in the MIMIR paper.

Plain numpy so that cross-validation, evaluation and reports share one definition. Every
function takes (prediction, reference) in that order, drops pairs where either is NaN, and
returns NaN (never raises) when the remaining data cannot define the metric, e.g. a constant
reference or fewer than two pairs, so that one degenerate target never stops a whole report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike

from mimir.errors import MimirError

#: Reference values with |x| at or below this are excluded from MAPE (as in the paper).
MAPE_MIN_ABS_REFERENCE = 1e-4
#: Score at or above which a binary prediction counts as positive.
BINARY_THRESHOLD = 0.5


class MetricInputError(MimirError, ValueError):
    """Inputs a metric cannot be computed on at all (mismatched lengths, non-binary labels)."""


def paired(prediction: ArrayLike, reference: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as float64 with every pair that holds a NaN (or inf) removed."""
    predicted = np.asarray(prediction, dtype=np.float64).ravel()
    expected = np.asarray(reference, dtype=np.float64).ravel()
    if predicted.shape != expected.shape:
        raise MetricInputError(
            f"prediction and reference differ in length ({predicted.size} vs {expected.size})"
        )
    keep = np.isfinite(predicted) & np.isfinite(expected)
    return predicted[keep], expected[keep]


def _is_constant(values: np.ndarray) -> bool:
    return values.size == 0 or bool(np.all(values == values[0]))


def icc_2_1_matrix(ratings: ArrayLike) -> float:
    """ICC(2,1) of an (n subjects, k raters) matrix: two-way random effects, absolute agreement.

    Shrout & Fleiss (1979) case 2 / McGraw & Wong (1996) ICC(A,1), from the two-way ANOVA
    mean squares: (MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n). Rows with a NaN are
    dropped. NaN when fewer than two complete rows remain or the denominator vanishes.
    """
    table = np.asarray(ratings, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] < 2:
        raise MetricInputError(f"ICC needs an (n, k >= 2) matrix, got shape {table.shape}")
    table = table[np.all(np.isfinite(table), axis=1)]
    n, k = table.shape
    if n < 2:
        return math.nan
    grand_mean = table.mean()
    row_means = table.mean(axis=1)
    column_means = table.mean(axis=0)
    ss_rows = k * np.sum((row_means - grand_mean) ** 2)
    ss_columns = n * np.sum((column_means - grand_mean) ** 2)
    ss_total = np.sum((table - grand_mean) ** 2)
    ss_error = max(ss_total - ss_rows - ss_columns, 0.0)
    ms_rows = ss_rows / (n - 1)
    ms_columns = ss_columns / (k - 1)
    ms_error = ss_error / ((n - 1) * (k - 1))
    denominator = ms_rows + (k - 1) * ms_error + k * (ms_columns - ms_error) / n
    if not denominator > 0:
        return math.nan
    return float((ms_rows - ms_error) / denominator)


def icc_2_1(prediction: ArrayLike, reference: ArrayLike) -> float:
    """ICC(2,1) treating prediction and reference as two raters of the same subjects.

    NaN for a constant reference: the ICC measures agreement relative to the spread between
    subjects, which the reference then does not define.
    """
    predicted, expected = paired(prediction, reference)
    if _is_constant(expected):
        return math.nan
    return icc_2_1_matrix(np.column_stack([predicted, expected]))


def r2(prediction: ArrayLike, reference: ArrayLike) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot around the reference mean."""
    predicted, expected = paired(prediction, reference)
    if expected.size < 2 or _is_constant(expected):
        return math.nan
    ss_residual = np.sum((expected - predicted) ** 2)
    ss_total = np.sum((expected - expected.mean()) ** 2)
    return float(1.0 - ss_residual / ss_total)


def mae(prediction: ArrayLike, reference: ArrayLike) -> float:
    """Mean absolute error, in the target's unit."""
    predicted, expected = paired(prediction, reference)
    if expected.size == 0:
        return math.nan
    return float(np.mean(np.abs(predicted - expected)))


def bias(prediction: ArrayLike, reference: ArrayLike) -> float:
    """Mean of prediction - reference, in the target's unit: the Bland-Altman bias, which ICC
    penalises and MAE hides (a network that under-predicts every new subject a little)."""
    predicted, expected = paired(prediction, reference)
    if expected.size == 0:
        return math.nan
    return float(np.mean(predicted - expected))


def mape_percent(prediction: ArrayLike, reference: ArrayLike) -> float:
    """Mean absolute percentage error over pairs whose reference is not (nearly) zero."""
    predicted, expected = paired(prediction, reference)
    usable = np.abs(expected) > MAPE_MIN_ABS_REFERENCE
    if not np.any(usable):
        return math.nan
    return float(100.0 * np.mean(np.abs((predicted[usable] - expected[usable]) / expected[usable])))


def _binary_labels(reference: np.ndarray) -> np.ndarray:
    invalid = ~np.isin(reference, (0.0, 1.0))
    if np.any(invalid):
        examples = ", ".join(f"{value:g}" for value in np.unique(reference[invalid])[:5])
        raise MetricInputError(f"a binary reference must hold only 0 and 1; found {examples}")
    return reference == 1.0


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    mean_rank = last_rank - (counts - 1) / 2.0
    return mean_rank[inverse]


def auc_roc(score: ArrayLike, reference: ArrayLike) -> float:
    """Area under the ROC curve via the Mann-Whitney rank sum (ties count one half).

    NaN when the reference holds only one class.
    """
    scores, expected = paired(score, reference)
    positive = _binary_labels(expected)
    n_positive = int(positive.sum())
    n_negative = positive.size - n_positive
    if n_positive == 0 or n_negative == 0:
        return math.nan
    ranks = average_ranks(scores)
    rank_sum = ranks[positive].sum()
    return float((rank_sum - n_positive * (n_positive + 1) / 2.0) / (n_positive * n_negative))


def precision_recall(
    score: ArrayLike, reference: ArrayLike, threshold: float = BINARY_THRESHOLD
) -> tuple[float, float]:
    """Precision and recall when scores at or above `threshold` are called positive.

    Precision is NaN without any positive call, recall NaN without any positive reference.
    """
    scores, expected = paired(score, reference)
    positive = _binary_labels(expected)
    called = scores >= threshold
    true_positive = int(np.sum(called & positive))
    n_called = int(called.sum())
    n_positive = int(positive.sum())
    precision = true_positive / n_called if n_called else math.nan
    recall = true_positive / n_positive if n_positive else math.nan
    return precision, recall


@dataclass(frozen=True)
class AgreementMetrics:
    """The paper's per-target numbers; binary-only fields are NaN for continuous targets."""

    n: int
    icc: float
    r2: float
    mae: float
    bias: float
    mape_percent: float
    auc: float = math.nan
    precision: float = math.nan
    recall: float = math.nan


def agreement_metrics(prediction: ArrayLike, reference: ArrayLike, binary: bool = False) -> AgreementMetrics:
    """All metrics of one target; binary targets add AUC, precision and recall and have no MAPE
    (a percentage of a 0/1 label is undefined for every 0 and meaningless for the 1s)."""
    predicted, expected = paired(prediction, reference)
    metrics = AgreementMetrics(
        n=int(expected.size),
        icc=icc_2_1(predicted, expected),
        r2=r2(predicted, expected),
        mae=mae(predicted, expected),
        bias=bias(predicted, expected),
        mape_percent=math.nan if binary else mape_percent(predicted, expected),
    )
    if not binary:
        return metrics
    precision, recall = precision_recall(predicted, expected)
    return replace(metrics, auc=auc_roc(predicted, expected), precision=precision, recall=recall)
