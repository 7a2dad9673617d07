"""Saliency maps: where in the 2D image each predicted mean comes from (`mimir explain`).

maps.py: one Captum-based function per method; overlay.py: the map over the image as a PNG;
aggregate.py: cohort maps averaged over exams; pipeline.py: the orchestration over exams, modules
and targets (not explain.py: that submodule would hide the function `explain` here). Importing
this package imports neither numpy nor torch (the CLI lists the method names from here); its
entry points are resolved on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

#: The method names `mimir explain --method` takes: the keys of `mimir.explain.maps.METHODS`,
#: repeated here so that listing them imports no torch (a test keeps the two equal).
METHOD_NAMES = ("gradcam", "guided-gradcam", "integrated-gradients")
#: The residual stages Grad-CAM (and guided Grad-CAM) can take, as `mimir explain --layer` lists
#: them: the last (coarsest, most specific to the target) first.
GRADCAM_LAYERS = ("layer4", "layer3", "layer2", "layer1")
DEFAULT_LAYER = GRADCAM_LAYERS[0]

_OWNERS = {
    "ExplainError": "mimir.explain.pipeline",
    "ExplainOptions": "mimir.explain.pipeline",
    "ExplainResult": "mimir.explain.pipeline",
    "explain": "mimir.explain.pipeline",
}


def __getattr__(name: str) -> Any:
    if name not in _OWNERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_OWNERS[name]), name)


__all__ = ["DEFAULT_LAYER", "GRADCAM_LAYERS", "METHOD_NAMES", "ExplainError", "ExplainOptions", "ExplainResult", "explain"]
