import pytest

from mimir.atomic import atomic_path, atomic_write_text


def test_atomic_write_creates_file_and_no_leftovers(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_failure_leaves_previous_content_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    host = socket.gethostname().replace(".", "_").replace("-", "_")
    stale = tmp_path / f".sub-01.npy.{host}-{dead_pid}.x1.part"
    alive = tmp_path / f".b.npy.{host}-{os.getpid()}.x2.part"
    unrelated = tmp_path / "keep.npy"
    for path in (stale, alive, unrelated):
        path.write_bytes(b"x")
    from mimir.atomic import remove_stale_temporaries

    assert remove_stale_temporaries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, unrelated.name])


def test_written_files_are_readable_by_others(tmp_path):
    target = tmp_path / "shared.txt"
    atomic_write_text(target, "x")
    assert target.stat().st_mode & 0o044 == 0o044


def _dead_pid() -> int:
    import subprocess
    import sys

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)


def test_a_killed_folder_write_is_cleaned_by_the_next_write_of_that_name(tmp_path):
    import os

    from mimir.atomic import _host, atomic_folder

    dead, host = _dead_pid(), _host()
    stale = tmp_path / f".body.{host}-{dead}.a1b2c3d4.part"  # what kill -9 mid-write leaves
    stale_retired = tmp_path / f".body.{host}-{dead}.e5f6a7b8.old"
    other_module = tmp_path / f".organs.{host}-{dead}.a1b2c3d4.part"
    running = tmp_path / f".body.{host}-{os.getpid()}.a1b2c3d4.part"
    for folder in (stale, stale_retired, other_module, running):
        folder.mkdir()
        (folder / "weights.safetensors").write_bytes(b"half")
    with atomic_folder(tmp_path / "body") as staging:
        (staging / "module.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["body", other_module.name, running.name])
    assert [p.name for p in (tmp_path / "body").iterdir()] == ["module.json"]


def test_a_folder_gets_the_mode_of_a_plain_mkdir(tmp_path):
    import os

    from mimir.atomic import atomic_folder

    previous = os.umask(0o027)
    try:
        with atomic_folder(tmp_path / "shared") as staging:
            (staging / "data").write_text("x")
    finally:
        os.umask(previous)
    (tmp_path / "plain").mkdir()
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o750
    previous = os.umask(0o022)
    try:
        with atomic_folder(tmp_path / "shared") as staging:  # replaces the folder
            (staging / "data").write_text("y")
    finally:
        os.umask(previous)
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "shared" / "data").read_text() == "y"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "shared"]


def test_an_output_that_cannot_be_created_is_found_before_work(tmp_path):
    from mimir.atomic import UnwritableError, check_can_create
    from mimir.errors import MimirError

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(UnwritableError, match="does not exist"):
        check_can_create(tmp_path / "missing" / "out.csv")
    with pytest.raises(UnwritableError, match="is not a folder"):
        check_can_create(blocker / "sub" / "out", parents=True)
    assert check_can_create(tmp_path / "new" / "deeper" / "module", parents=True) == tmp_path / "new" / "deeper" / "module"
    assert not (tmp_path / "new").exists()
    assert issubclass(UnwritableError, MimirError) and issubclass(UnwritableError, OSError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # the probe leaves nothing


def test_a_read_only_folder_is_found_by_the_probe(tmp_path, monkeypatch):
    import errno
    import os

    from mimir.atomic import UnwritableError, check_can_create

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("mimir.atomic.tempfile.mkstemp", read_only)
    with pytest.raises(UnwritableError, match="cannot write in .*Read-only file system"):
        check_can_create(tmp_path / "out.csv")


def test_a_failing_write_becomes_one_line_saying_what_was_kept(tmp_path):
    from mimir.atomic import UnwritableError, atomic_write_text, reported_write

    target = tmp_path / "table.csv"
    target.mkdir()  # a folder where the file must go: the rename fails as on a full disk
    with pytest.raises(UnwritableError) as caught:
        with reported_write(target, "the images are kept"):
            atomic_write_text(target, "a,b\n")
    assert str(caught.value).startswith(f"{target} could not be written (")
    assert str(caught.value).endswith("; the images are kept")
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]
