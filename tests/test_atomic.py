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
