"""Labels to noiseless Dixon water and fat signal with partial-volume edges.

Signal per voxel is proton density times (1 - fat fraction) for water and times the fat
fraction for fat. Each participant's tissues are scaled by their own factors (relaxation
differs between people), so that a sum of signal is not a fixed multiple of a tissue volume.
Partial volume comes from a small blur, as if each voxel averaged its neighbourhood. Gain,
coil inhomogeneity and noise are added per station by the zip writer.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mimir.synth.anatomy import Anatomy
from mimir.synth.labels import THIGH_MUSCLES, Tissue
from mimir.synth.subject import SubjectParams

#: Relative signal of each tissue for an average participant (proton density and weighting).
#: The UK Biobank Dixon protocol is a spoiled gradient echo (TR 6.69 ms, flip angle 10 degrees)
#: and so T1-weighted: the liver (T1 about 600-800 ms at 1.5 T) is brighter than muscle
#: (about 1,000-1,100 ms) in the water image, which makes it stand out in the projections.
PROTON_DENSITY = {
    Tissue.SAT: 1.08,
    Tissue.VAT: 1.08,
    Tissue.MUSCLE: 1.0,
    Tissue.THIGH_ANTERIOR_RIGHT: 1.0,
    Tissue.THIGH_ANTERIOR_LEFT: 1.0,
    Tissue.THIGH_POSTERIOR_RIGHT: 1.0,
    Tissue.THIGH_POSTERIOR_LEFT: 1.0,
    Tissue.LIVER: 1.25,
    Tissue.KIDNEY: 1.05,
    Tissue.SPLEEN: 1.05,
    Tissue.BONE: 0.6,
    Tissue.LUNG: 0.06,
    Tissue.AIR: 0.0,
    Tissue.BED: 0.03,
    Tissue.VISCERA: 0.72,
}


def partial_volume(volume: np.ndarray) -> np.ndarray:
    """Soften label edges as a finite voxel (2.2 mm in-plane, 3 mm slices) would."""
    for axis, side in ((2, 0.25), (1, 0.25), (0, 0.2)):
        kernel = np.array([side, 1.0 - 2.0 * side, side], dtype=np.float32)
        volume = ndimage.correlate1d(volume, kernel, axis=axis, mode="nearest")
    return volume


def tissue_signal(params: SubjectParams) -> np.ndarray:
    """Lookup table label -> signal of pure tissue for this participant."""
    scale = {
        Tissue.SAT: params.signal_adipose,
        Tissue.VAT: params.signal_adipose,
        Tissue.MUSCLE: params.signal_muscle,
        Tissue.LIVER: params.signal_liver,
        Tissue.KIDNEY: params.signal_kidney,
        Tissue.SPLEEN: params.signal_kidney,
        Tissue.BONE: params.signal_marrow,
        Tissue.VISCERA: params.signal_viscera,
        **{tissue: params.signal_muscle for tissue in THIGH_MUSCLES},
    }
    table = np.zeros(256, dtype=np.float32)
    for tissue, value in PROTON_DENSITY.items():
        table[tissue] = value * scale.get(tissue, 1.0)
    return table


def render_signal(anatomy: Anatomy, params: SubjectParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noiseless float32 water and fat volumes on the exam grid."""
    del rng  # the signal is a deterministic function of the anatomy and the participant
    density = tissue_signal(params)
    pd = density[anatomy.labels]
    fat = pd * anatomy.fat_fraction
    water = pd - fat
    # Blur only the box around the body (and bed): the rest is exactly zero.
    rows = np.flatnonzero(pd.any(axis=(0, 2)))
    cols = np.flatnonzero(pd.any(axis=(0, 1)))
    box = (slice(None), slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2))
    water[box] = partial_volume(water[box])
    fat[box] = partial_volume(fat[box])
    return water, fat
