import shutil

import numpy as np
import pytest

from mimir.imaging.cache import (
    CacheError,
    ExamId,
    cached_exams,
    load_image,
    qc_flags,
    qc_folder,
    qc_table_path,
    write_image,
    write_qc,
)


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


def test_qc_flags_come_from_the_sidecars_else_from_qc_csv(tmp_path):
    image = np.zeros((3, 256, 256), np.uint8)
    for stem, flag in (("1_20201_2_0", "seam;low_coverage"), ("2_20201_2_0", "")):
        write_image(tmp_path, stem, image)
        write_qc(tmp_path, stem, {"subject": stem, "flag": flag})
    write_qc(tmp_path, "3_20201_2_0", {"subject": "3_20201_2_0", "flag": "water_fat_swap"})  # no image: ignored
    assert qc_flags(tmp_path) == {"1_20201_2_0": "seam;low_coverage", "2_20201_2_0": ""}

    shutil.rmtree(qc_folder(tmp_path))
    qc_table_path(tmp_path).write_text("subject,flag\n1_20201_2_0,seam\n2_20201_2_0,\n")
    assert qc_flags(tmp_path) == {"1_20201_2_0": "seam", "2_20201_2_0": ""}
