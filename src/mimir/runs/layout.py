"""Where each output of training, cross-validation and evaluation lies in its folder.

Writers and readers name a file through these objects rather than spelling its name, so a
run folder written by `mimir train` is read back by module building, a cross-validation
folder by the report, under one set of names. The files' contents are described where they
are written: learn/train.py, learn/crossval.py, evaluation/evaluate.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Files that a training run and a cross-validation both hold, with one meaning.
_CONFIG = "config.toml"
_DATA_SUMMARY = "data_summary.json"


@dataclass(frozen=True)
class EvaluationFolder:
    """Metrics of predictions against a reference, and the report that shows them."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def metrics_markdown(self) -> Path:
        return self.path / "metrics.md"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def figures(self) -> Path:
        """The report's figures as separate PNG files."""
        return self.path / "figures"


@dataclass(frozen=True)
class RunFolder:
    """One training run (`mimir train`, or one fold of a cross-validation)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / _CONFIG

    @property
    def data_summary(self) -> Path:
        return self.path / _DATA_SUMMARY

    @property
    def standardization(self) -> Path:
        return self.path / "standardization.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def weights(self) -> Path:
        return self.path / "weights.safetensors"

    @property
    def val_predictions(self) -> Path:
        return self.path / "val_predictions.csv"

    @property
    def record(self) -> Path:
        """run.json: software versions, device and timings of each session."""
        return self.path / "run.json"


@dataclass(frozen=True)
class FoldFolder(RunFolder):
    """One fold of a cross-validation: a training run plus the fold's markers and baseline."""

    @property
    def done(self) -> Path:
        """fold.json, written last: its presence marks a finished fold."""
        return self.path / "fold.json"

    @property
    def baseline_predictions(self) -> Path:
        return self.path / "baseline_predictions.csv"

    @property
    def baseline_alphas(self) -> Path:
        return self.path / "baseline_alphas.json"

    def is_complete(self) -> bool:
        return all(path.is_file() for path in (self.done, self.val_predictions, self.weights))


@dataclass(frozen=True)
class CrossvalFolder(EvaluationFolder):
    """A cross-validation: shared inputs, one FoldFolder per fold, and the merged outputs.

    Its metrics and report are those of an evaluation of the out-of-fold predictions.
    """

    @property
    def config(self) -> Path:
        return self.path / _CONFIG

    @property
    def splits(self) -> Path:
        return self.path / "splits.json"

    @property
    def reference(self) -> Path:
        return self.path / "reference.csv"

    @property
    def data_summary(self) -> Path:
        return self.path / _DATA_SUMMARY

    @property
    def record(self) -> Path:
        """crossval.json: module, folds, software versions, sessions and timings."""
        return self.path / "crossval.json"

    @property
    def baseline_config(self) -> Path:
        return self.path / "baseline.json"

    def fold(self, fold: int) -> FoldFolder:
        return FoldFolder(self.path / f"fold_{fold}")

    @property
    def oof_predictions(self) -> Path:
        return self.path / "oof_predictions.csv"

    @property
    def oof_predictions_calibrated(self) -> Path:
        return self.path / "oof_predictions_calibrated.csv"

    @property
    def calibration(self) -> Path:
        return self.path / "calibration.csv"

    @property
    def curves(self) -> Path:
        return self.path / "curves.csv"

    @property
    def baseline_predictions(self) -> Path:
        return self.path / "baseline_predictions.csv"

    @property
    def baseline_metrics(self) -> Path:
        return self.path / "baseline_metrics.csv"

    @property
    def summary(self) -> Path:
        return self.path / "summary.csv"

    @property
    def explanations(self) -> Path:
        """explain/: saliency maps of the out-of-fold exams, `METHOD/` as `mimir explain` writes
        them, with the cohort maps the report shows (see explain/crossval.py)."""
        return self.path / "explain"
