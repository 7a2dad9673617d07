import numpy as np
import pytest

from mimir.imaging.cache import CacheError, ExamId, cached_exams, load_image, write_image


def test_exam_id_reads_field_20201_stems_only():
    assert ExamId.from_stem("1234567_20201_2_0") == ExamId("1234567_20201_2_0", 1234567, 2)
    assert ExamId.from_stem("1234567_20201_3_1").instance == 3
    for other in ("1234567_20204_2_0", "notes"):
        assert ExamId.from_stem(other) == ExamId(other, None, None)


def test_cached_exams_lists_every_image_with_its_exam(tmp_path):
    image = np.zeros((3, 256, 256), np.uint8)
    for stem in ("2_20201_2_0", "1_20201_3_0", "scan"):
        write_image(tmp_path, stem, image)
    listed = cached_exams(tmp_path)
    assert [(c.exam.eid, c.exam.instance, c.path.name) for c in listed] == [
        (1, 3, "1_20201_3_0.npy"), (2, 2, "2_20201_2_0.npy"), (None, None, "scan.npy"),
    ]


def test_load_image_refuses_what_is_not_the_representation(tmp_path):
    np.save(tmp_path / "small.npy", np.zeros((3, 128, 128), np.uint8))
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    with pytest.raises(CacheError, match="expected a"):
        load_image(tmp_path / "small.npy")
    with pytest.raises(CacheError, match="not a readable .npy file"):
        load_image(tmp_path / "broken.npy")
