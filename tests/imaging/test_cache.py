import io
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from mimir.imaging.cache import (
    UNREADABLE_QC_FLAG,
    CacheError,
    CacheNotWritableError,
    ExamId,
    cached_exams,
    entry_problem,
    image_path,
    is_cached,
    load_image,
    prepare_cache,
    qc_flags,
    qc_folder,
    qc_table_path,
    write_image,
    write_qc,
)
from mimir.imaging.errors import ExamReadError


def test_exam_id_reads_field_20201_stems_only():
    assert ExamId.from_stem("1234567_20201_2_0") == ExamId("1234567_20201_2_0", 1234567, 2, 20201)
    assert ExamId.from_stem("1234567_20201_3_1").instance == 3
    ExamId.from_stem("1234567_20201_2_0").require_body_mri()
    for other in ("notes", "1234567_2020_2_0", "scan_20204_2_0"):
        assert ExamId.from_stem(other) == ExamId(other, None, None)
        ExamId.from_stem(other).require_body_mri()  # names that are not UK Biobank's are read


def test_exam_id_of_another_uk_biobank_field_has_no_participant_and_is_refused():
    liver = ExamId.from_stem("1234567_20204_2_0")
    assert liver == ExamId("1234567_20204_2_0", None, None, 20204)
    with pytest.raises(ExamReadError, match="field 20204, not field 20201") as raised:
        liver.require_body_mri()
    assert raised.value.stage == "field"


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
    with pytest.raises(CacheError, match=r"not a \.npy file \(it does not start with the \.npy magic string\)"):
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


def _header_only(path: Path, descr: str, shape: tuple[int, ...]) -> None:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    path.write_bytes(buffer.getvalue())


def _truncated(path: Path) -> None:
    np.save(path, np.ones((3, 256, 256), np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # what a copy to a full disk leaves


def _padded(path: Path) -> None:
    np.save(path, np.ones((3, 256, 256), np.uint8))
    with path.open("ab") as handle:
        handle.write(b"\0" * 16)


def _npz(path: Path) -> None:
    with path.open("wb") as handle:
        np.savez(handle, image=np.ones((3, 256, 256), np.uint8))


BAD_ENTRIES = {
    "truncated": (_truncated, r"truncated: 98\d+ bytes, the header needs 196736"),
    "padded": (_padded, r"16 bytes beyond the array the header describes \(196736 bytes\)"),
    "npz": (_npz, r"not a readable \.npy file \(a zip archive such as \.npz under a \.npy name\)"),
    "192 TiB": (
        lambda path: _header_only(path, "|u1", (3, 2**23, 2**23)),
        r"expected a \(3, 256, 256\) uint8 array, the header says \(3, 8388608, 8388608\) uint8",
    ),
    "objects": (lambda path: _header_only(path, "|O", (3, 256, 256)), r"expected a \(3, 256, 256\) uint8 array, the header says \(3, 256, 256\) object"),
    "empty": (lambda path: path.write_bytes(b""), r"not a readable \.npy file \(an empty file\)"),
    "fifo": (lambda path: os.mkfifo(path), r"not a regular file \(a FIFO\)"),
    "folder": (lambda path: path.mkdir(), r"not a regular file \(a folder\)"),
}


@pytest.mark.parametrize("kind", BAD_ENTRIES)
def test_an_entry_is_valid_only_when_header_and_size_are_the_representation(tmp_path, kind):
    make, reason = BAD_ENTRIES[kind]
    write_image(tmp_path, "good", np.ones((3, 256, 256), np.uint8))
    make(image_path(tmp_path, "bad"))
    assert entry_problem(image_path(tmp_path, "good")) is None and is_cached(tmp_path, "good")
    assert not is_cached(tmp_path, "bad")
    assert re.fullmatch(reason, entry_problem(image_path(tmp_path, "bad")) or "")
    with pytest.raises(CacheError, match=reason):  # refused from the header: nothing allocated, no hang
        load_image(image_path(tmp_path, "bad"))


def test_cached_exams_leaves_out_what_is_not_a_regular_file(tmp_path, caplog):
    write_image(tmp_path, "1_20201_2_0", np.zeros((3, 256, 256), np.uint8))
    os.mkfifo(tmp_path / "2_20201_2_0.npy")
    with caplog.at_level(logging.WARNING, logger="mimir.imaging.cache"):
        listed = cached_exams(tmp_path)
    assert [cached.path.name for cached in listed] == ["1_20201_2_0.npy"]
    assert "2_20201_2_0.npy is left out of the cache listing: not a regular file (a FIFO)" in caplog.text


def test_an_unreadable_qc_sidecar_flags_its_exam(tmp_path, caplog):
    image = np.zeros((3, 256, 256), np.uint8)
    for stem in ("1_20201_2_0", "2_20201_2_0", "3_20201_2_0"):
        write_image(tmp_path, stem, image)
    write_qc(tmp_path, "1_20201_2_0", {"subject": "1_20201_2_0", "flag": ""})
    (qc_folder(tmp_path) / "2_20201_2_0.json").write_text('{"subject": "2_20201_2_0", "fl')  # cut short
    os.mkfifo(qc_folder(tmp_path) / "3_20201_2_0.json")  # would block a plain open
    with caplog.at_level(logging.WARNING, logger="mimir.imaging.cache"):
        flags = qc_flags(tmp_path)
    assert flags == {"1_20201_2_0": "", "2_20201_2_0": UNREADABLE_QC_FLAG, "3_20201_2_0": UNREADABLE_QC_FLAG}
    assert "not a regular file (a FIFO)" in caplog.text


def test_a_cache_that_cannot_take_files_is_refused(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(CacheNotWritableError, match=r"cache .*not_a_folder/cache: .*not_a_folder is not a folder$"):
        prepare_cache(blocker / "cache")
    assert prepare_cache(tmp_path / "cache") == tmp_path / "cache"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["qc"]  # the probes leave nothing
