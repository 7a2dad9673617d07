"""Fused water and fat volumes as NIfTI files (`--save-volumes`), for viewing and other tools.

The NIfTI voxel axes are (column, row, slice) of our arrays, i.e. i runs to the patient's
left, j posterior and k toward the feet, so viewers show the volume as acquired; the affine
maps them to RAS millimetres (LPS with x and y negated).
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from mimir.atomic import atomic_write_bytes
from mimir.imaging.fusion import FusedVolume

logger = logging.getLogger(__name__)

#: gzip level for saved volumes: fast, and float noise compresses poorly at any level.
_GZIP_LEVEL = 1
#: NIfTI xform code for scanner-anatomical coordinates.
_SCANNER = 1


def nifti_affine(volume: FusedVolume) -> np.ndarray:
    """4x4 affine from NIfTI voxel (column, row, slice) to RAS mm."""
    x0, y0, z0 = volume.origin
    slice_step, row_step, col_step = volume.spacing
    return np.array(
        [
            [-col_step, 0.0, 0.0, -x0],
            [0.0, -row_step, 0.0, -y0],
            [0.0, 0.0, -slice_step, z0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


def to_nifti(array: np.ndarray, volume: FusedVolume) -> nib.Nifti1Image:
    """One channel of `volume` (our (slice, row, column) array) as a NIfTI image."""
    data = np.ascontiguousarray(np.asarray(array, dtype=np.float32).transpose(2, 1, 0))
    affine = nifti_affine(volume)
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code=_SCANNER)
    image.set_qform(affine, code=_SCANNER)
    image.header.set_xyzt_units(xyz="mm")
    return image


def save_volumes(volume: FusedVolume, folder: Path, stem: str) -> tuple[Path, Path]:
    """Write `{stem}_water.nii.gz` and `{stem}_fat.nii.gz` into `folder`, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = (folder / f"{stem}_water.nii.gz", folder / f"{stem}_fat.nii.gz")
    for array, path in zip((volume.water, volume.fat), paths, strict=True):
        payload = gzip.compress(to_nifti(array, volume).to_bytes(), compresslevel=_GZIP_LEVEL)
        atomic_write_bytes(path, payload)
        logger.debug("wrote %s", path)
    return paths
