"""Agreement metrics, uncertainty calibration and evaluation against a reference release."""

from mimir.evaluation.calibration import (
    apply_variance_scale,
    auce,
    calibration_curve,
    fit_variance_scale,
    sparsification_curve,
)
from mimir.evaluation.evaluate import (
    apply_calibration_factors,
    evaluate_predictions,
    fit_calibration_factors,
    write_metrics,
)
from mimir.evaluation.metrics import agreement_metrics, auc_roc, bias, icc_2_1, mae, mape_percent, precision_recall, r2

__all__ = [
    "agreement_metrics",
    "apply_calibration_factors",
    "apply_variance_scale",
    "auc_roc",
    "auce",
    "bias",
    "calibration_curve",
    "evaluate_predictions",
    "fit_calibration_factors",
    "fit_variance_scale",
    "icc_2_1",
    "mae",
    "mape_percent",
    "precision_recall",
    "r2",
    "sparsification_curve",
    "write_metrics",
]
