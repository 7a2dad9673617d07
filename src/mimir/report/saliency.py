"""How a saliency map is drawn over an image panel: the one owner of its scaling and colours.

The subject figure of `mimir show --explain` (`mimir.report.figure`), the overlays and the cohort
maps of `mimir explain` (`mimir.explain.overlay`, `mimir.explain.aggregate`) all draw through
here, so a map looks the same wherever it appears. It lives in report/ because explain/ imports
report/ (never the other way round). The map is drawn in a heat colour map whose opacity grows
with the saliency, so the anatomy stays readable where the network did not look.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Saliency at this percentile of a map (and above) is drawn at full strength.
DISPLAY_PERCENTILE = 99.5
#: Opacity of the strongest saliency over the image.
MAX_ALPHA = 0.65
#: The colour map of saliency (distinct from the grey and magma channels under it).
SALIENCY_COLOURS = "jet"


def normalise(saliency_map: np.ndarray) -> np.ndarray:
    """The map scaled to [0, 1], its DISPLAY_PERCENTILE at 1 (a map of zeros stays zeros).

    A percentile rather than the maximum: a few extreme pixels (common in gradient maps) would
    otherwise leave everything else invisible and dominate cohort averages.
    """
    values = np.nan_to_num(np.asarray(saliency_map, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(np.percentile(values, DISPLAY_PERCENTILE)) if values.size else 0.0
    if top <= 0.0:
        top = float(values.max(initial=0.0))
    if top <= 0.0:
        return np.zeros_like(values, dtype=np.float32)
    return np.clip(values / top, 0.0, 1.0).astype(np.float32)


def draw_saliency(axes: Any, shown: np.ndarray) -> None:
    """A [0, 1] map (from `normalise`) over what `axes` shows, transparent where it is zero."""
    axes.imshow(shown, cmap=SALIENCY_COLOURS, vmin=0.0, vmax=1.0, alpha=MAX_ALPHA * shown, aspect="auto",
                interpolation="bilinear")


__all__ = ["DISPLAY_PERCENTILE", "MAX_ALPHA", "SALIENCY_COLOURS", "draw_saliency", "normalise"]
