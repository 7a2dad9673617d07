import csv
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mimir.cli import main
from mimir.imaging.cache import load_image
from mimir.imaging.compress import CompressOptions, InputError, compress_exams, discover_inputs


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture()
def batch_with_bad_inputs(tiny_cohort: Path, tmp_path: Path) -> Path:
    """Two good exams beside exams that must fail, each for a different reason."""
    folder = tmp_path / "batch"
    folder.mkdir()
    good = sorted(tiny_cohort.glob("*.zip"))[:2]
    for path in good:
        os.symlink(path, folder / path.name)
    (folder / "1000001_20201_2_0.zip").write_text("this is not a zip")
    data = good[0].read_bytes()
    (folder / "1000002_20201_2_0.zip").write_bytes(data[: len(data) // 2])
    with zipfile.ZipFile(folder / "1000003_20201_2_0.zip", "w") as archive:
        archive.writestr("manifest.csv", "filename\n")
    return folder


def test_discover_inputs_expands_folders_and_lists(tiny_cohort, tmp_path):
    zips = sorted(tiny_cohort.glob("*.zip"))
    listing = tmp_path / "exams.txt"
    listing.write_text(f"# two exams\n{zips[0]}\n\n{zips[1]}\n")
    assert [e.path for e in discover_inputs([listing])] == zips[:2]
    assert len(discover_inputs([tiny_cohort])) == len(zips)
    with pytest.raises(InputError, match="no such file"):
        discover_inputs([tmp_path / "missing.zip"])


def test_bad_exams_fail_with_a_row_and_good_ones_land(batch_with_bad_inputs, tmp_path):
    cache = tmp_path / "cache"
    summary = compress_exams(discover_inputs([batch_with_bad_inputs]), CompressOptions(cache=cache))
    assert (summary.done, summary.failed, summary.skipped) == (2, 3, 0)
    failures = {row["subject"]: row for row in _read_csv(cache / "failures.csv")}
    assert set(failures) == {"1000001_20201_2_0", "1000002_20201_2_0", "1000003_20201_2_0"}
    assert all(row["stage"] and row["reason"] for row in failures.values())
    assert sorted(p.stem for p in cache.glob("*.npy")) == sorted(
        p.stem for p in batch_with_bad_inputs.glob("*.zip") if p.stem not in failures
    )
    for path in cache.glob("*.npy"):
        image = load_image(path)
        assert image.max() > 0
    qc_rows = _read_csv(cache / "qc.csv")
    assert len(qc_rows) == 2
    assert {"subject", "eid", "instance", "flag"} <= set(qc_rows[0])


def test_rerun_skips_cached_exams(tiny_cohort, tmp_path):
    cache = tmp_path / "cache"
    inputs = discover_inputs([tiny_cohort])[:2]
    first = compress_exams(inputs, CompressOptions(cache=cache))
    assert first.done == 2
    before = {p: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
    second = compress_exams(inputs, CompressOptions(cache=cache))
    assert (second.done, second.skipped) == (0, 2)
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.npy")} == before
    forced = compress_exams(inputs, CompressOptions(cache=cache, force=True))
    assert forced.done == 2


def test_cli_exit_codes(batch_with_bad_inputs, tmp_path, capsys):
    assert main(["compress", str(tmp_path / "nothing-here"), "--cache", str(tmp_path / "c0")]) == 2
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "1000001_20201_2_0.zip").write_text("not a zip")
    assert main(["compress", str(only_bad), "--cache", str(tmp_path / "c1"), "--workers", "1"]) == 1
    assert main(["compress", str(batch_with_bad_inputs), "--cache", str(tmp_path / "c2"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "done 2" in out and "failed 3" in out
    assert main(["compress", str(batch_with_bad_inputs), "--cache", str(tmp_path / "c2"), "--workers", "1"]) == 0
    rerun = capsys.readouterr().out
    assert "done 0, skipped 2" in rerun and "nan" not in rerun and "per exam" not in rerun


def test_killed_run_resumes_without_corrupt_files(tiny_cohort, tmp_path):
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "mimir", "-q", "compress", str(tiny_cohort), "--cache", str(cache), "--workers", "1"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(cache.glob("*.npy")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    cached_before = len(list(cache.glob("*.npy")))
    assert 1 <= cached_before < 4, "the kill must land mid-batch"

    assert main(["-q", "compress", str(tiny_cohort), "--cache", str(cache), "--workers", "1"]) == 0
    stems = sorted(p.stem for p in cache.glob("*.npy"))
    assert stems == sorted(p.stem for p in tiny_cohort.glob("*.zip"))
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]
    for stem in stems:
        assert load_image(cache / f"{stem}.npy").dtype == np.uint8


def test_an_invalid_cache_entry_is_compressed_again(tiny_cohort, tmp_path, caplog):
    cache = tmp_path / "cache"
    inputs = discover_inputs([tiny_cohort])[:2]
    assert compress_exams(inputs, CompressOptions(cache=cache)).done == 2
    truncated, fifo = (cache / f"{exam.path.stem}.npy" for exam in inputs)
    expected = truncated.read_bytes()
    truncated.write_bytes(expected[:4096])  # a copy cut short: it used to count as cached forever
    fifo.unlink()
    os.mkfifo(fifo)  # it used to be skipped as cached, and hang whoever read it
    with caplog.at_level("WARNING", logger="mimir.imaging.compress"):
        again = compress_exams(inputs, CompressOptions(cache=cache))
    assert (again.done, again.skipped, again.failed) == (2, 0, 0)
    assert truncated.read_bytes() == expected
    assert fifo.is_file() and load_image(fifo).shape == (3, 256, 256)
    assert f"{truncated.stem}: the cached image is invalid (truncated: 4096 bytes, the header needs 196736)" in caplog.text
    assert f"{fifo.stem}: the cached image is invalid (not a regular file (a FIFO))" in caplog.text
    assert compress_exams(inputs, CompressOptions(cache=cache)).skipped == 2


def test_an_unwritable_cache_is_refused_before_any_exam(tiny_cohort, tmp_path, monkeypatch, capsys):
    import mimir.imaging.compress as compress_module
    from mimir.imaging.cache import CacheNotWritableError

    def no_work(*args, **kwargs):
        raise AssertionError("an exam was compressed before the cache was checked")

    monkeypatch.setattr(compress_module, "compress_exam", no_work)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(CacheNotWritableError, match="is not a folder"):
        compress_exams(discover_inputs([tiny_cohort]), CompressOptions(cache=blocker / "cache"))
    code = main(["-q", "compress", str(tiny_cohort), "--cache", str(blocker / "cache"), "--workers", "1"])
    assert code == 2
    error = capsys.readouterr().err
    assert error == f"mimir compress: error: cache {blocker / 'cache'}: {blocker} is not a folder\n"
    assert blocker.read_text() == "x"


def test_a_failing_final_write_is_one_line_saying_what_was_kept(batch_with_bad_inputs, tmp_path, capsys):
    cache = tmp_path / "cache"
    (cache / "failures.csv").mkdir(parents=True)  # the table cannot land, as on a disk that filled up
    code = main(["-q", "compress", str(batch_with_bad_inputs), "--cache", str(cache), "--workers", "1"])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert error.startswith(f"mimir compress: error: {cache / 'failures.csv'} could not be written (")
    assert error.endswith(
        f"; the 2 images compressed in this run are kept in {cache} (a rerun skips them); "
        "the 3 failures are in the log above"
    )
    assert len(list(cache.glob("*.npy"))) == 2
    assert all(load_image(path).dtype == np.uint8 for path in cache.glob("*.npy"))


@pytest.mark.parametrize(
    "cache_below, reason",
    [((), "exists and is not a folder"), (("cache",), "is not a folder"), (("a", "cache"), "is not a folder")],
    ids=["is-the-file", "through-the-file", "deep"],
)
def test_a_cache_path_through_a_file_is_named_as_such(tmp_path, cache_below, reason):
    from mimir.imaging.cache import CacheNotWritableError, prepare_cache

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cache = blocker.joinpath(*cache_below)
    with pytest.raises(CacheNotWritableError) as error:
        prepare_cache(cache)
    assert str(error.value).startswith(f"cache {cache}") and reason in str(error.value)
    assert "Not a directory" not in str(error.value) and blocker.read_text() == "x"
