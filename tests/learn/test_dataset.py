import numpy as np
import pandas as pd
import pytest

from mimir.errors import PathNotFoundError
from mimir.imaging.cache import CacheError
from mimir.learn.dataset import (
    ExamImages,
    TrainingBatches,
    TrainingDataError,
    assemble_exams,
    index_image_cache,
    read_targets,
    translate,
)


def test_translate_shifts_and_fills_with_zeros():
    image = np.arange(1, 2 * 5 * 6 + 1, dtype=np.uint8).reshape(2, 5, 6)
    shifted = translate(image, 2, -1)
    assert np.array_equal(shifted[:, 2:, :-1], image[:, :-2, 1:])
    assert not shifted[:, :2, :].any() and not shifted[:, :, -1].any()
    assert np.array_equal(translate(image, 0, 0), image)
    assert not translate(image, 5, 0).any()


def test_training_batches_are_a_function_of_seed_and_iteration():
    full = list(TrainingBatches(10, 4, 16, seed=3, start=0, stop=8))
    resumed = list(TrainingBatches(10, 4, 16, seed=3, start=5, stop=8))
    assert resumed == full[5:]
    other_seed = list(TrainingBatches(10, 4, 16, seed=4, start=0, stop=8))
    assert other_seed != full
    first_epoch = [index for batch in full for index, _, _ in batch][:10]
    assert sorted(first_epoch) == list(range(10))
    shifts = np.array([(dy, dx) for batch in full for _, dy, dx in batch])
    assert shifts.min() >= -16 and shifts.max() <= 16 and len(np.unique(shifts)) > 5


def test_shift_probability_leaves_a_share_of_images_unshifted_and_keeps_the_rest():
    every = list(TrainingBatches(10, 8, 16, seed=3, start=0, stop=50))
    assert list(TrainingBatches(10, 8, 16, seed=3, start=0, stop=50, shift_probability=1.0)) == every
    half = list(TrainingBatches(10, 8, 16, seed=3, start=0, stop=50, shift_probability=0.5))
    pairs = [(a, b) for batch_every, batch_half in zip(every, half, strict=True)
             for a, b in zip(batch_every, batch_half, strict=True)]
    assert all(a[0] == b[0] for a, b in pairs)  # the same exams in the same order
    assert all(b[1:] in (a[1:], (0, 0)) for a, b in pairs)  # a shift kept or dropped, never redrawn
    unshifted = np.mean([b[1:] == (0, 0) for _, b in pairs])
    assert 0.4 < unshifted < 0.6
    assert list(TrainingBatches(10, 8, 16, seed=3, start=20, stop=50, shift_probability=0.5)) == half[20:]
    none = list(TrainingBatches(10, 8, 16, seed=3, start=0, stop=5, shift_probability=0.0))
    assert {request[1:] for batch in none for request in batch} == {(0, 0)}


def _write_cache(folder, keys):
    folder.mkdir()
    for eid, instance in keys:
        np.save(folder / f"{eid}_20201_{instance}_0.npy", np.zeros((3, 256, 256), np.uint8))
    return index_image_cache(folder)


def test_index_keeps_field_20201_images_and_warns_about_other_files(tmp_path, caplog):
    _write_cache(tmp_path / "cache", [(3, 2), (1, 3)])
    for stem in ("2_20204_2_0", "notes"):
        np.save(tmp_path / "cache" / f"{stem}.npy", np.zeros((3, 256, 256), np.uint8))
    with caplog.at_level("WARNING"):
        index = index_image_cache(tmp_path / "cache")
    assert list(zip(index["eid"], index["instance"], strict=True)) == [(1, 3), (3, 2)]
    assert "ignored 2 cache files" in caplog.text


def test_index_is_sorted_by_eid_and_instance_not_by_file_name(tmp_path):
    index = _write_cache(tmp_path / "cache", [(10, 2), (9, 3), (9, 2)])
    assert list(zip(index["eid"], index["instance"], strict=True)) == [(9, 2), (9, 3), (10, 2)]


def test_a_missing_image_cache_is_named(tmp_path):
    with pytest.raises(PathNotFoundError, match="image cache folder not found"):
        index_image_cache(tmp_path / "absent")


def test_assemble_exams_counts_what_it_drops(tmp_path):
    index = _write_cache(tmp_path / "cache", [(1, 2), (2, 2), (3, 2), (4, 2)])
    targets = read_targets(pd.DataFrame({
        "eid": [1, 2, 3, 5],
        "liverFat": [1.0, np.nan, 3.0, 4.0],
        "liverVolume": [1.5, np.nan, np.nan, 2.0],
    }))
    assert (targets["instance"] == 2).all()
    exams = assemble_exams(index, targets, ["liverFat", "liverVolume", "kidneyParenchymalVolume"])
    assert exams.keys() == [(1, 2), (3, 2)]
    assert exams.dropped == {
        "image_without_targets_row": 1,
        "no_known_target_of_module": 1,
        "targets_row_without_image": 1,
    }
    assert np.isnan(exams.values()[:, 2]).all()
    subset = assemble_exams(index, targets, ["liverFat"], ids=[(3, 2), (9, 2)])
    assert subset.keys() == [(3, 2)]
    assert subset.dropped["requested_without_image"] == 1


def test_module_targets_all_absent_is_an_error(tmp_path):
    index = _write_cache(tmp_path / "cache", [(1, 2)])
    with pytest.raises(TrainingDataError):
        assemble_exams(index, read_targets(pd.DataFrame({"eid": [1], "age": [50.0]})), ["height"])


def test_dataset_items_apply_the_requested_shift(tmp_path):
    path = tmp_path / "1_20201_2_0.npy"
    image = np.full((3, 256, 256), 7, np.uint8)
    np.save(path, image)
    dataset = ExamImages([path], np.array([[0.5]]))
    shifted, target = dataset[(0, 3, -2)]
    assert shifted.dtype.is_floating_point is False
    assert shifted[:, :3].sum() == 0 and shifted[:, :, -2:].sum() == 0 and shifted[0, 10, 10] == 7
    assert target.tolist() == [0.5]


def test_bad_image_shape_is_a_clear_error(tmp_path):
    path = tmp_path / "1_20201_2_0.npy"
    np.save(path, np.zeros((3, 128, 128), np.uint8))
    with pytest.raises(CacheError, match="expected a"):
        ExamImages([path], np.zeros((1, 1)))[0]
