"""`mimir targets` on an output it cannot write: one line, before the export is read."""

from __future__ import annotations

import errno
import os

import pytest

from mimir.cli import main


@pytest.fixture()
def export(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("eid,21002-2.0,50-2.0\n1000001,70.5,172\n1000002,81.0,180\n")
    return path


def test_an_unwritable_output_is_one_line_before_the_export_is_read(export, tmp_path, capsys, monkeypatch):
    import mimir.targets.exports as exports

    def no_work(*args, **kwargs):
        raise AssertionError("the export was read before the output was checked")

    monkeypatch.setattr(exports, "export_to_targets", no_work)
    out = tmp_path / "missing" / "targets.csv"
    assert main(["targets", str(export), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"mimir targets: error: {out}: the folder {out.parent} does not exist"
    assert main(["targets", str(export), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"mimir targets: error: --out {tmp_path} is a folder; give a file name"


def test_a_failing_write_is_one_line(export, tmp_path, capsys, monkeypatch):
    import mimir.targets.exports as exports

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(exports, "atomic_path", disk_full)
    out = tmp_path / "targets.csv"
    assert main(["targets", str(export), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"mimir targets: error: {out} could not be written (No space left on device); nothing was written"
    assert not out.exists()
