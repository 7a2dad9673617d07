import nibabel as nib
import numpy as np
import pytest

from mimir.imaging.fusion import FusedVolume
from mimir.imaging.volume_io import save_volumes


def test_saved_volumes_keep_values_and_world_positions(tmp_path):
    rng = np.random.default_rng(0)
    water = rng.random((7, 5, 6)).astype(np.float32)
    fat = rng.random((7, 5, 6)).astype(np.float32)
    volume = FusedVolume(water=water, fat=fat, origin=(-120.5, -80.25, 310.0), spacing=(3.0, 2.23214293, 2.23214293))
    water_path, fat_path = save_volumes(volume, tmp_path / "volumes", "1234567_20201_2_0")
    assert water_path.name == "1234567_20201_2_0_water.nii.gz"
    image = nib.load(water_path)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "I")
    index = (5, 3, 4)  # (slice, row, column)
    nifti_index = index[::-1]
    assert image.get_fdata(dtype=np.float32)[nifti_index] == water[index]
    ras = image.affine @ np.array([*nifti_index, 1.0])
    lps = (-ras[0], -ras[1], ras[2])
    assert lps == pytest.approx(volume.voxel_to_lps(index))
    assert volume.voxel_to_lps(index) == pytest.approx((-120.5 + 4 * 2.23214293, -80.25 + 3 * 2.23214293, 310.0 - 15.0))
    np.testing.assert_array_equal(np.asarray(nib.load(fat_path).dataobj).transpose(2, 1, 0), fat)
    assert sorted(path.name for path in (tmp_path / "volumes").iterdir()) == [
        "1234567_20201_2_0_fat.nii.gz",
        "1234567_20201_2_0_water.nii.gz",
    ]
