"""NIfTI water/fat pairs: RAS affines become LPS Station positions, head to foot."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from mimir.imaging.errors import ExamReadError
from mimir.imaging.nifti import read_nifti_pair
from mimir.imaging.read import ExamInput, read_exam

SHAPE = (20, 16, 6)  # NIfTI voxel axes (i, j, k)


def save(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def pair(tmp_path, affine, shape=SHAPE):
    water = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    fat = water * 2 + 1
    return save(tmp_path / "water.nii.gz", water, affine), save(tmp_path / "fat.nii.gz", fat, affine), water


def world_lps(station, k, r, c):
    row_spacing, col_spacing = station.pixel_spacing
    return station.positions[k] + np.array([c * col_spacing, r * row_spacing, 0.0])


@pytest.mark.parametrize(
    "affine",
    [
        np.array([[-2.0, 0, 0, 30.0], [0, -2.0, 0, 20.0], [0, 0, 3.0, -50.0], [0, 0, 0, 1]]),  # LPS-like storage
        np.array([[2.0, 0, 0, -30.0], [0, 2.0, 0, -20.0], [0, 0, 3.0, -50.0], [0, 0, 0, 1]]),  # RAS storage
        np.array([[0, 0, -2.0, 10.0], [2.0, 0, 0, -20.0], [0, -3.0, 0, 40.0], [0, 0, 0, 1]]),  # permuted axes
    ],
    ids=["lps-like", "ras", "permuted"],
)
def test_every_voxel_lands_at_its_affine_position(tmp_path, affine):
    water_path, fat_path, water = pair(tmp_path, affine)
    exam = read_nifti_pair(water_path, fat_path)
    (station,) = exam.stations
    assert station.water.dtype == np.float32
    assert np.all(np.diff(station.z_positions) < 0), "slices must run head to foot"
    rng = np.random.default_rng(0)
    for k, r, c in zip(*(rng.integers(0, n, 12) for n in station.shape), strict=True):
        source = np.argwhere(water == station.water[k, r, c])[0]
        ras = affine @ np.array([*source, 1.0])
        np.testing.assert_allclose(world_lps(station, k, r, c), ras[:3] * [-1, -1, 1], atol=1e-6)
        assert station.fat[k, r, c] == station.water[k, r, c] * 2 + 1


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([2.0, 2.0, 3.0, 1.0]),
        np.array([[-2.232, 0, 0, 30.0], [0, -2.232, 0, 20.0], [0, 0, -3.0, 500.0], [0, 0, 0, 1]]),  # as --save-volumes writes
        np.array([[0, 0, -2.0, 10.0], [2.0, 0, 0, -20.0], [0, -3.0, 0, 40.0], [0, 0, 0, 1]]),  # permuted axes
    ],
    ids=["ras", "save-volumes", "permuted"],
)
def test_an_axis_aligned_affine_gets_no_oblique_note(tmp_path, affine):
    exam = read_nifti_pair(*pair(tmp_path, affine)[:2])
    assert not any("oblique" in note for note in exam.notes), exam.notes


def test_an_oblique_affine_is_read_along_the_nearest_axes_and_says_so(tmp_path):
    angle = np.deg2rad(10.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.0, 2.0, 3.0])
    exam = read_nifti_pair(*pair(tmp_path, affine)[:2])
    assert exam.notes == ["NIfTI affine is oblique; axes taken as the nearest patient directions"]


def test_known_affine_gives_known_positions(tmp_path):
    affine = np.array([[-2.0, 0, 0, 30.0], [0, -2.5, 0, 20.0], [0, 0, 3.0, -50.0], [0, 0, 0, 1]])
    water_path, fat_path, water = pair(tmp_path, affine)
    (station,) = read_exam(ExamInput(path=water_path, kind="nifti_pair", fat_path=fat_path)).stations
    assert station.shape == (6, 16, 20)
    assert station.pixel_spacing == (2.5, 2.0)
    np.testing.assert_allclose(station.positions[0], [-30.0, -20.0, -50.0 + 5 * 3.0])
    np.testing.assert_allclose(station.z_positions, -50.0 + 3.0 * np.arange(5, -1, -1))
    np.testing.assert_array_equal(station.water[0], water[:, :, 5].T)


def test_trailing_singleton_dimension_is_accepted(tmp_path):
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    water_path, fat_path, _ = pair(tmp_path, affine, shape=(*SHAPE, 1))
    assert read_nifti_pair(water_path, fat_path).stations[0].shape == (6, 16, 20)


def test_mismatched_shapes_cannot_be_paired(tmp_path):
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    water_path = save(tmp_path / "w.nii", np.zeros(SHAPE, np.float32), affine)
    fat_path = save(tmp_path / "f.nii", np.zeros((20, 16, 7), np.float32), affine)
    with pytest.raises(ExamReadError) as caught:
        read_nifti_pair(water_path, fat_path)
    assert caught.value.stage == "pairing"


def test_mismatched_affines_cannot_be_paired(tmp_path):
    water_path = save(tmp_path / "w.nii", np.zeros(SHAPE, np.float32), np.diag([-2.0, -2.0, 3.0, 1.0]))
    fat_path = save(tmp_path / "f.nii", np.zeros(SHAPE, np.float32), np.diag([-2.0, -2.0, 4.0, 1.0]))
    with pytest.raises(ExamReadError) as caught:
        read_nifti_pair(water_path, fat_path)
    assert caught.value.stage == "pairing"


@pytest.mark.parametrize(("content", "stage"), [(None, "open"), (b"not a nifti file", "open")])
def test_missing_or_garbage_files_are_refused(tmp_path, content, stage):
    water_path = save(tmp_path / "w.nii", np.zeros(SHAPE, np.float32), np.eye(4))
    fat_path = tmp_path / "f.nii"
    if content is not None:
        fat_path.write_bytes(content)
    with pytest.raises(ExamReadError) as caught:
        read_nifti_pair(water_path, fat_path)
    assert caught.value.stage == stage


def test_two_dimensional_volume_is_refused(tmp_path):
    affine = np.eye(4)
    water_path = save(tmp_path / "w.nii", np.zeros((20, 16), np.float32), affine)
    fat_path = save(tmp_path / "f.nii", np.zeros((20, 16), np.float32), affine)
    with pytest.raises(ExamReadError) as caught:
        read_nifti_pair(water_path, fat_path)
    assert caught.value.stage == "geometry"


@pytest.mark.parametrize(
    ("affine", "shape", "stage", "words"),
    [
        (np.diag([2.0, 2.0, float("nan"), 1.0]), SHAPE, "header", "affine (sform/qform) is not finite"),
        (np.diag([50.0, 2.0, 3.0, 1.0]), SHAPE, "header", "voxel size [50.0, 2.0, 3.0] mm outside"),
        (np.diag([1e-6, 2.0, 3.0, 1.0]), SHAPE, "header", "voxel size"),
        (np.diag([2.0, 2.0, 3.0, 1.0]), (2000, 2, 2), "header", "NIfTI dim [2000, 2, 2] outside 1 to 1024"),
        (np.diag([0.3, 0.3, 0.3, 1.0]), (1024, 1024, 100), "safety", "memory budget per exam"),
    ],
    ids=["nan-affine", "huge-voxels", "tiny-voxels", "too-many-voxels", "beyond-memory"],
)
def test_implausible_nifti_headers_are_refused_before_voxels_are_read(tmp_path, monkeypatch, affine, shape, stage, words):
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header.set_sform(affine, code=1)
    header["vox_offset"] = 352
    water, fat = tmp_path / "water.nii", tmp_path / "fat.nii"
    for path in (water, fat):
        with path.open("wb") as handle:
            header.write_to(handle)  # the header alone: no voxels to read
            handle.write(b"\0" * 4)
    monkeypatch.setattr(nib.dataobj_images.DataobjImage, "get_fdata", _no_voxels)
    with pytest.raises(ExamReadError) as caught:
        read_nifti_pair(water, fat)
    assert caught.value.stage == stage
    assert words in caught.value.reason


def _no_voxels(*args, **kwargs):
    raise AssertionError("voxels read before the header was checked")
