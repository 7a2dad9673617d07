"""A PNG per synthetic subject, so a person can check that the anatomy looks human."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mimir.atomic import atomic_path


def _to_uint8(view: np.ndarray) -> np.ndarray:
    low, high = float(view.min()), float(view.max())
    scaled = (view - low) / (high - low) if high > low else np.zeros_like(view)
    return (scaled * 255).astype(np.uint8)


def preview_image(water: np.ndarray, fat: np.ndarray) -> np.ndarray:
    """Coronal and sagittal sums of water, then of fat, side by side, head up (uint8 2D)."""
    views = []
    for signal in (water, fat):
        coronal = signal.sum(axis=1)  # (slices, columns): patient right on the image left
        sagittal = signal.sum(axis=2)  # (slices, rows): anterior on the image left
        views.extend([_to_uint8(coronal), _to_uint8(sagittal)])
    spacer = np.full((water.shape[0], 4), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for view in views:
        parts.extend([view, spacer])
    return np.concatenate(parts[:-1], axis=1)


def write_preview(water: np.ndarray, fat: np.ndarray, path: Path) -> None:
    """Write the preview with true proportions (3 mm slices, 2.23 mm pixels)."""
    from PIL import Image

    from mimir.protocol import GRID_SLICE_SPACING_MM, PIXEL_SPACING_MM

    picture = preview_image(water, fat)
    height = int(round(picture.shape[0] * GRID_SLICE_SPACING_MM / PIXEL_SPACING_MM))
    image = Image.fromarray(picture).resize((picture.shape[1], height), Image.Resampling.BILINEAR)
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")
