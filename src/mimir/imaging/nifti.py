"""Water/fat NIfTI volume pairs (studies that reproduce the protocol elsewhere) to one Station.

A pair becomes a single Station spanning the whole volume: the volume is taken as already
assembled (one station or fused elsewhere), and fusion only places it on the common grid,
resampling z when its slice spacing is not the grid's. The NIfTI affine maps voxels to RAS mm;
the Station convention is LPS with slices head to foot, rows anterior to posterior and columns
right to left, so the arrays are reoriented and positions converted (x and y change sign).
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from mimir.imaging.errors import ExamReadError, Stage
from mimir.imaging.header_limits import MAX_EXAM_BYTES, MAX_SERIES_SLICES, MAX_SLICE_SPACING_MM, MIN_PIXEL_SPACING_MM
from mimir.imaging.station import ExamStations, Station
from mimir.protocol import GRID_SLICE_SPACING_MM, PIXEL_SPACING_MM

logger = logging.getLogger(__name__)

#: Axis codes (direction each index grows toward) of a Station: inferior, posterior, left.
STATION_AXCODES = ("I", "P", "L")
_RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])
_OBLIQUE_TOLERANCE = 1e-3


def read_nifti_pair(water_path: str | Path, fat_path: str | Path) -> ExamStations:
    """One Station from a water and a fat NIfTI volume on the same grid."""
    water_image = _load(Path(water_path))
    fat_image = _load(Path(fat_path))
    for image, path in ((water_image, Path(water_path)), (fat_image, Path(fat_path))):
        check_header(image, path)
    water = _volume(water_image, Path(water_path))
    fat = _volume(fat_image, Path(fat_path))
    if water.shape != fat.shape:
        raise ExamReadError(Stage.PAIRING, f"water {water.shape} and fat {fat.shape} NIfTI volumes differ in shape")
    affine = np.asarray(water_image.affine, dtype=np.float64)
    if not np.allclose(affine, fat_image.affine, atol=1e-3):
        raise ExamReadError(Stage.PAIRING, "water and fat NIfTI volumes have different affines (not on the same grid)")
    notes: list[str] = []
    water_lps, fat_lps, station_affine = to_station_axes(water, fat, affine, notes)
    positions, pixel_spacing = station_geometry(station_affine, water_lps.shape[0])
    station = Station(
        water=water_lps,
        fat=fat_lps,
        positions=positions,
        pixel_spacing=pixel_spacing,
        series_description=f"nifti:{Path(water_path).name}",
        notes=notes,
    )
    return ExamStations(stations=[station], notes=list(notes))


def _load(path: Path) -> nib.spatialimages.SpatialImage:
    if not path.is_file():
        raise ExamReadError(Stage.OPEN, f"no such NIfTI file: {path}")
    try:
        return nib.load(path)
    except Exception as error:  # noqa: BLE001 - nibabel raises many types for bad files
        raise ExamReadError(Stage.OPEN, f"{path.name} is not a readable NIfTI volume ({type(error).__name__})") from error


def check_header(image: nib.spatialimages.SpatialImage, path: Path) -> None:
    """Refuse dimensions, voxel sizes and memory beyond header_limits before voxels are read.

    A volume may hold a whole body, so every axis may have up to MAX_SERIES_SLICES voxels of
    MIN_PIXEL_SPACING_MM to MAX_SLICE_SPACING_MM; the memory estimate counts the float32
    volume, its reoriented copy and its share of the fused grid (twice), as for DICOM exams.
    """
    shape = tuple(int(size) for size in image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise ExamReadError(Stage.GEOMETRY, f"{path.name} has shape {shape}, expected a 3D volume")
    if not all(1 <= size <= MAX_SERIES_SLICES for size in shape):
        raise ExamReadError(Stage.HEADER, f"{path.name}: NIfTI dim {list(shape)} outside 1 to {MAX_SERIES_SLICES} voxels per axis")
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise ExamReadError(Stage.HEADER, f"{path.name}: NIfTI affine (sform/qform) is not finite")
    voxel_mm = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all((voxel_mm >= MIN_PIXEL_SPACING_MM) & (voxel_mm <= MAX_SLICE_SPACING_MM)):
        raise ExamReadError(
            Stage.HEADER,
            f"{path.name}: NIfTI voxel size {np.round(voxel_mm, 4).tolist()} mm "
            f"outside {MIN_PIXEL_SPACING_MM:g} to {MAX_SLICE_SPACING_MM:g} mm",
        )
    voxels = float(np.prod(shape))
    grid_voxels = voxels * float(np.prod(voxel_mm)) / (PIXEL_SPACING_MM**2 * GRID_SLICE_SPACING_MM)
    total = 2 * (2 * 4 * voxels) + 2 * 2 * 4 * grid_voxels
    if total > MAX_EXAM_BYTES:
        raise ExamReadError(
            Stage.SAFETY,
            f"{path.name}: NIfTI dim {list(shape)} of {np.round(voxel_mm, 4).tolist()} mm needs about {total / 2**20:.0f} MiB, "
            f"above the {MAX_EXAM_BYTES / 2**20:.0f} MiB memory budget per exam",
        )


def _volume(image: nib.spatialimages.SpatialImage, path: Path) -> np.ndarray:
    try:
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as error:  # noqa: BLE001 - truncated or corrupt voxel data
        raise ExamReadError(Stage.PIXELS, f"{path.name}: voxel data unreadable ({type(error).__name__})") from error
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ExamReadError(Stage.GEOMETRY, f"{path.name} has shape {data.shape}, expected a 3D volume")
    if not np.all(np.isfinite(data)):
        raise ExamReadError(Stage.PIXELS, f"{path.name} holds NaN or infinite voxels")
    return data


def to_station_axes(water: np.ndarray, fat: np.ndarray, affine: np.ndarray, notes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reorient both volumes to (slices I, rows P, cols L) and return the matching affine."""
    current = io_orientation(affine, tol=None)
    if np.isnan(current).any():
        raise ExamReadError(Stage.GEOMETRY, "NIfTI affine is degenerate (axes cannot be matched to patient directions)")
    transform = ornt_transform(current, axcodes2ornt(STATION_AXCODES))
    station_affine = affine @ inv_ornt_aff(transform, water.shape)
    directions = station_affine[:3, :3] / np.linalg.norm(station_affine[:3, :3], axis=0)
    # Each voxel axis along one patient axis: its unit direction has a component of 1. (The
    # station's axes (I, P, L) are world z, y, x, so the matrix is a permutation, not eye(3).)
    if not np.allclose(np.abs(directions).max(axis=0), 1.0, atol=_OBLIQUE_TOLERANCE):
        notes.append("NIfTI affine is oblique; axes taken as the nearest patient directions")
    reoriented = [np.ascontiguousarray(apply_orientation(volume, transform), dtype=np.float32) for volume in (water, fat)]
    return reoriented[0], reoriented[1], station_affine


def station_geometry(station_affine: np.ndarray, slices: int) -> tuple[np.ndarray, tuple[float, float]]:
    """LPS position of the first voxel of every slice, and (row, column) spacing in mm."""
    voxels = np.zeros((slices, 4))
    voxels[:, 0] = np.arange(slices)
    voxels[:, 3] = 1.0
    ras = (station_affine @ voxels.T).T[:, :3]
    spacing = np.linalg.norm(station_affine[:3, :3], axis=0)
    return ras * _RAS_TO_LPS, (float(spacing[1]), float(spacing[2]))
