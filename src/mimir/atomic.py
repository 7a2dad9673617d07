"""Writes that either complete or leave nothing: a killed run never leaves a half-written file.

Temporary files and staging folders carry the host and process id that wrote them, so a rerun
can remove the leftovers of a killed process without touching those of a run still going on the
same (possibly shared) folder.

A write that cannot happen at all (a read-only or missing folder) is found before the work that
would produce it (`check_can_create`); one that fails at the end (a full disk) becomes one line
saying what was kept (`reported_write`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mimir.errors import MimirError

_SUFFIX = ".part"
#: A folder replaced by `atomic_folder`, kept under this suffix until its successor is in place.
_RETIRED_SUFFIX = ".old"
_FILE_MODE = 0o644
#: Leftovers of other hosts are only removed when older than this (their process may be alive).
_FOREIGN_TEMPORARY_AGE_S = 24 * 3600
#: `.{target name}.{host}-{pid}.{random}.part` (or `.old`); the host has neither dots nor dashes.
_TEMPORARY_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<host>[^.\-]+)-(?P<pid>\d+)\.[^.]+\.(?:part|old)$")


class UnwritableError(MimirError, OSError):
    """A file or folder MIMIR must write cannot be written: a missing or read-only folder, a full disk."""


def _host() -> str:
    return socket.gethostname().replace(".", "_").replace("-", "_")


def _owner_tag() -> str:
    return f"{_host()}-{os.getpid()}"


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.{_owner_tag()}.", suffix=_SUFFIX, dir=target.parent
    )
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        os.chmod(temporary_path, _FILE_MODE)  # mkstemp makes 0600; results are meant to be shared
        os.replace(temporary_path, target)
    finally:
        temporary_path.unlink(missing_ok=True)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as temporary:
        temporary.write_bytes(data)


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def _staging_folder(target: Path) -> Path:
    """A new empty folder beside `target`, made by a plain mkdir so that the user's umask sets
    its mode (mkdtemp would make it 0700, unreadable to the colleagues the results are for)."""
    while True:
        staging = target.with_name(f".{target.name}.{_owner_tag()}.{secrets.token_hex(4)}{_SUFFIX}")
        try:
            staging.mkdir()
        except FileExistsError:
            continue
        return staging


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield a staging folder beside `target`; it replaces `target` only on success.

    Readers never see a half-written folder. A folder already at `target` is set aside under a
    `.old` name, then removed once the new one is in place (or put back if that rename fails).
    Leftovers of a killed writer are removed on the next write of the same name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent, target.name)
    staging = _staging_folder(target)
    retired: Path | None = None
    try:
        yield staging
        if target.exists() or target.is_symlink():
            retired = staging.with_name(staging.name.removesuffix(_SUFFIX) + _RETIRED_SUFFIX)
            os.replace(target, retired)
        try:
            os.replace(staging, target)
        except OSError:
            if retired is not None:  # put the previous folder back
                os.replace(retired, target)
                retired = None
            raise
    finally:
        if staging.exists():
            _remove(staging)
        if retired is not None:
            _remove(retired)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path, name: str | None = None) -> int:
    """Delete temporaries (files or staging folders) left in `folder` by killed writers, only
    those of the target `name` when given; returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    host = _host()
    removed = 0
    for path in folder.glob(f".{glob.escape(name) if name is not None else '*'}.*"):
        match = _TEMPORARY_NAME.match(path.name)
        if match is None or (name is not None and match["target"] != name):
            continue
        if match["host"] == host:
            stale = not _process_alive(int(match["pid"]))
        else:
            stale = time.time() - path.lstat().st_mtime > _FOREIGN_TEMPORARY_AGE_S
        if stale:
            _remove(path)
            removed += 1
    return removed


def probe_folder(folder: Path) -> None:
    """Write one byte to a new file in `folder` and remove it: raises the OSError (read-only,
    permission denied, disk full) that a real write there would meet."""
    handle, probe = tempfile.mkstemp(prefix=f".mimir.{_owner_tag()}.", suffix=".probe", dir=folder)
    try:
        os.write(handle, b"\0")
    finally:
        os.close(handle)
        os.unlink(probe)


def check_can_create(path: Path, *, parents: bool = False) -> Path:
    """Fail before any work when `path` cannot be created or replaced (a probe file is written
    in its folder); with `parents`, a missing folder is fine when its nearest existing ancestor
    takes new files (the folders are made when writing)."""
    path = Path(path)
    folder = path.parent
    if parents:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
    if not folder.is_dir():
        if folder.exists():
            raise UnwritableError(f"{path}: {folder} is not a folder")
        raise UnwritableError(f"{path}: the folder {folder} does not exist")
    _probe_for(path, folder)
    return path


def _probe_for(path: Path, folder: Path) -> None:
    try:
        probe_folder(folder)
    except OSError as error:
        raise UnwritableError(f"{path}: cannot write in {folder} ({error.strerror or error})") from error


def check_can_create_folder(folder: Path) -> Path:
    """Fail before any work when the output folder `folder` cannot be made or cannot take new
    files: a path through a regular file, or a regular file in its place, would otherwise end
    in a traceback from the first mkdir after the work is done. Nothing is created here."""
    folder = Path(folder)
    if folder.is_dir():
        _probe_for(folder, folder)
        return folder
    if folder.exists() or folder.is_symlink():
        raise UnwritableError(f"{folder} exists and is not a folder")
    return check_can_create(folder, parents=True)


@contextlib.contextmanager
def reported_write(target: Path, kept: str) -> Iterator[None]:
    """Turn an OSError of the write of `target` (disk full, folder gone read-only) into one
    line that names it and says what was kept (`kept`), instead of a traceback."""
    try:
        yield
    except UnwritableError:
        raise
    except OSError as error:
        raise UnwritableError(f"{target} could not be written ({error.strerror or error}); {kept}") from error
