"""MIMIR: calibrated body measurements from UK Biobank neck-to-knee MRI.

The main entry points of every pipeline stage, importable from here:

    import mimir
    mimir.generate_cohort, mimir.compress_exams, mimir.export_to_targets, mimir.train,
    mimir.run_crossval, mimir.build_module, mimir.load_module, mimir.predict,
    mimir.evaluate_predictions, mimir.show_exam

They are resolved on first use, so `import mimir` (and `mimir --help`) stays free of numpy
and torch. `MimirError` is the root of every error meant for a user.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mimir.errors import MimirError

__version__ = "0.1.0"

#: Public name -> the module that owns it, in pipeline order.
_OWNERS: dict[str, str] = {
    "CohortConfig": "mimir.synth.cohort",
    "generate_cohort": "mimir.synth.cohort",
    "CompressOptions": "mimir.imaging.compress",
    "discover_inputs": "mimir.imaging.compress",
    "compress_exams": "mimir.imaging.compress",
    "export_to_targets": "mimir.targets.exports",
    "read_targets_table": "mimir.targets.exports",
    "TrainConfig": "mimir.runs.config",
    "train": "mimir.learn.train",
    "run_crossval": "mimir.learn.crossval",
    "merge_crossval": "mimir.learn.crossval",
    "build_module": "mimir.inference.module_build",
    "import_legacy": "mimir.inference.legacy",
    "load_module": "mimir.inference.modules",
    "PredictOptions": "mimir.inference.predict",
    "predict": "mimir.inference.predict",
    "run_prediction": "mimir.inference.predict",
    "write_predictions": "mimir.inference.table",
    "evaluate_predictions": "mimir.evaluation.evaluate",
    "show_exam": "mimir.show",
}

__all__ = [
    "MimirError",
    "__version__",
    "CohortConfig",
    "generate_cohort",
    "CompressOptions",
    "discover_inputs",
    "compress_exams",
    "export_to_targets",
    "read_targets_table",
    "TrainConfig",
    "train",
    "run_crossval",
    "merge_crossval",
    "build_module",
    "import_legacy",
    "load_module",
    "PredictOptions",
    "predict",
    "run_prediction",
    "write_predictions",
    "evaluate_predictions",
    "show_exam",
]

if TYPE_CHECKING:
    from mimir.evaluation.evaluate import evaluate_predictions
    from mimir.imaging.compress import CompressOptions, compress_exams, discover_inputs
    from mimir.inference.legacy import import_legacy
    from mimir.inference.module_build import build_module
    from mimir.inference.modules import load_module
    from mimir.inference.predict import PredictOptions, predict, run_prediction
    from mimir.inference.table import write_predictions
    from mimir.learn.crossval import merge_crossval, run_crossval
    from mimir.learn.train import train
    from mimir.runs.config import TrainConfig
    from mimir.show import show_exam
    from mimir.synth.cohort import CohortConfig, generate_cohort
    from mimir.targets.exports import export_to_targets, read_targets_table


def __getattr__(name: str) -> Any:
    owner = _OWNERS.get(name)
    if owner is None:
        raise AttributeError(f"module 'mimir' has no attribute {name!r}")
    value = getattr(importlib.import_module(owner), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
