import math

import numpy as np
import pytest
from sklearn.metrics import precision_score, r2_score, recall_score, roc_auc_score

from mimir.evaluation.metrics import (
    MetricInputError,
    agreement_metrics,
    auc_roc,
    average_ranks,
    bias,
    icc_2_1,
    icc_2_1_matrix,
    mae,
    mape_percent,
    paired,
    precision_recall,
    r2,
)

# Shrout & Fleiss (1979), Table 2: six targets rated by four judges; the paper reports ICC(2,1) = .29.
SHROUT_FLEISS = np.array(
    [
        [9, 2, 5, 8],
        [6, 1, 3, 2],
        [8, 4, 6, 8],
        [7, 1, 2, 6],
        [10, 5, 6, 9],
        [6, 2, 4, 7],
    ],
    dtype=float,
)


def icc_from_moments(x: np.ndarray, y: np.ndarray) -> float:
    """ICC(A,1) for two raters written with sample (co)variances instead of ANOVA tables.

    With k = 2 the mean squares reduce to MSR - MSE = 2 s_xy and
    MSR + MSE + 2 (MSC - MSE) / n = s_x^2 + s_y^2 + (mean x - mean y)^2 - (s_x^2 + s_y^2 - 2 s_xy) / n.
    """
    n = x.size
    covariance = np.cov(x, y, ddof=1)
    var_x, var_y, cov_xy = covariance[0, 0], covariance[1, 1], covariance[0, 1]
    offset = x.mean() - y.mean()
    return 2 * cov_xy / (var_x + var_y + offset**2 - (var_x + var_y - 2 * cov_xy) / n)


def test_icc_matches_shrout_fleiss_published_value():
    assert icc_2_1_matrix(SHROUT_FLEISS) == pytest.approx(0.29, abs=0.005)


def test_icc_constant_offset_is_penalised_by_hand_computed_value():
    # Rows (1,2) (2,3) (3,4) (4,5): MSR = 10/3, MSC = 2, MSE = 0 -> ICC = (10/3) / (10/3 + 2*2/4) = 10/13.
    prediction = np.array([1.0, 2.0, 3.0, 4.0])
    reference = prediction + 1.0
    assert icc_2_1(prediction, reference) == pytest.approx(10 / 13)


def test_icc_matches_independent_moment_formula_and_is_symmetric():
    rng = np.random.default_rng(3)
    reference = rng.normal(50, 10, 300)
    prediction = 0.9 * reference + 7 + rng.normal(0, 4, 300)
    expected = icc_from_moments(prediction, reference)
    assert icc_2_1(prediction, reference) == pytest.approx(expected, rel=1e-12)
    assert icc_2_1(reference, prediction) == pytest.approx(expected, rel=1e-12)
    assert 0.8 < expected < 0.95


def test_icc_of_identical_raters_is_one():
    values = np.array([3.0, 1.0, 4.0, 1.0, 5.0])
    assert icc_2_1(values, values) == pytest.approx(1.0)


def test_r2_matches_sklearn():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=200)
    prediction = reference + rng.normal(scale=0.5, size=200) + 0.3
    assert r2(prediction, reference) == pytest.approx(r2_score(reference, prediction), rel=1e-12)


def test_mae_and_mape_by_hand_with_near_zero_reference_excluded():
    reference = np.array([10.0, 20.0, 0.0, 5e-5])
    prediction = np.array([11.0, 18.0, 3.0, 1.0])
    assert mae(prediction, reference) == pytest.approx((1 + 2 + 3 + (1 - 5e-5)) / 4)
    # Only the first two pairs count: (10 % + 10 %) / 2.
    assert mape_percent(prediction, reference) == pytest.approx(10.0)


def test_bias_is_signed_so_errors_of_both_signs_cancel_unlike_mae():
    reference = np.array([10.0, 20.0, 30.0, 40.0])
    assert bias(reference - 1.5, reference) == pytest.approx(-1.5)
    assert bias(reference + [1.0, -1.0, 2.0, -2.0], reference) == pytest.approx(0.0)
    assert mae(reference + [1.0, -1.0, 2.0, -2.0], reference) == pytest.approx(1.5)


def test_auc_with_ties_matches_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500).astype(float)
    scores = np.round(labels * 0.3 + rng.uniform(size=500), 1)  # rounding makes many ties
    assert len(np.unique(scores)) < 20
    assert auc_roc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)


def test_auc_all_tied_is_one_half_and_perfect_is_one():
    labels = np.array([0.0, 1.0, 0.0, 1.0])
    assert auc_roc(np.full(4, 0.7), labels) == pytest.approx(0.5)
    assert auc_roc(np.array([0.1, 0.9, 0.2, 0.8]), labels) == pytest.approx(1.0)


def test_average_ranks_share_ties():
    np.testing.assert_allclose(average_ranks(np.array([10.0, 20.0, 10.0, 30.0])), [1.5, 3.0, 1.5, 4.0])


def test_precision_recall_at_half_match_sklearn():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 300).astype(float)
    scores = np.clip(labels * 0.4 + rng.uniform(size=300) * 0.7, 0, 1)
    scores[:5] = 0.5  # the threshold itself counts as a positive call
    called = (scores >= 0.5).astype(int)
    precision, recall = precision_recall(scores, labels)
    assert precision == pytest.approx(precision_score(labels, called))
    assert recall == pytest.approx(recall_score(labels, called))


def test_nan_pairs_are_dropped_and_counted():
    prediction = np.array([1.0, np.nan, 3.0, 4.0, 5.0, 6.5])
    reference = np.array([1.5, 2.0, np.nan, 4.0, 4.5, 6.0])
    clean_prediction, clean_reference = paired(prediction, reference)
    np.testing.assert_array_equal(clean_prediction, [1.0, 4.0, 5.0, 6.5])
    metrics = agreement_metrics(prediction, reference)
    assert metrics.n == 4
    assert metrics.mae == pytest.approx(np.mean([0.5, 0.0, 0.5, 0.5]))
    assert metrics.bias == pytest.approx(np.mean([-0.5, 0.0, 0.5, 0.5]))
    assert metrics.r2 == pytest.approx(r2_score(clean_reference, clean_prediction))
    assert metrics.icc == pytest.approx(icc_from_moments(clean_prediction, clean_reference))
    assert math.isnan(metrics.auc)


def test_degenerate_inputs_give_nan_not_errors():
    constant = np.full(10, 2.0)
    varying = np.arange(10, dtype=float)
    assert math.isnan(icc_2_1(varying, constant))
    assert math.isnan(r2(varying, constant))
    assert mae(varying, constant) == pytest.approx(np.mean(np.abs(varying - 2)))
    assert math.isnan(icc_2_1([1.0], [1.0]))
    assert math.isnan(mae([], []))
    assert math.isnan(bias([], [])) and math.isnan(bias([np.nan], [1.0]))
    assert math.isnan(mape_percent([1.0], [0.0]))
    assert math.isnan(auc_roc([0.2, 0.4], [1.0, 1.0]))
    precision, recall = precision_recall([0.1, 0.2], [0.0, 0.0])
    assert math.isnan(precision) and math.isnan(recall)
    everything_nan = agreement_metrics([np.nan, np.nan], [1.0, 0.0], binary=True)
    assert everything_nan.n == 0 and math.isnan(everything_nan.icc) and math.isnan(everything_nan.auc)


def test_binary_metrics_reject_non_binary_reference():
    with pytest.raises(MetricInputError, match="only 0 and 1"):
        auc_roc([0.1, 0.9], [1.0, 2.0])


def test_mismatched_lengths_raise():
    with pytest.raises(MetricInputError, match="differ in length"):
        mae([1.0, 2.0], [1.0])


def test_binary_agreement_metrics_fill_auc():
    labels = np.array([0, 0, 1, 1, 1, 0], dtype=float)
    scores = np.array([0.1, 0.6, 0.8, 0.4, 0.9, 0.2])
    metrics = agreement_metrics(scores, labels, binary=True)
    assert metrics.auc == pytest.approx(roc_auc_score(labels, scores))
    assert metrics.precision == pytest.approx(2 / 3)
    assert metrics.recall == pytest.approx(2 / 3)
    assert math.isnan(metrics.mape_percent), "no MAPE of 0/1 labels"
    assert not math.isnan(agreement_metrics(scores, labels).mape_percent)
