"""Writes that either complete or leave nothing: a killed run never leaves a half-written file.

Temporary files carry the host and process id that wrote them, so a rerun can remove the
leftovers of a killed process without touching those of a run still going on the same
(possibly shared) folder.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

_SUFFIX = ".part"
_FILE_MODE = 0o644
#: Leftovers of other hosts are only removed when older than this (their process may be alive).
_FOREIGN_TEMPORARY_AGE_S = 24 * 3600


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


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporaries left in `folder` by killed writers; returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    host = _host()
    removed = 0
    for path in folder.glob(f".*{_SUFFIX}"):
        parts = path.name.split(".")
        owner = next((part for part in reversed(parts) if "-" in part and part.rsplit("-", 1)[-1].isdigit()), None)
        if owner is None:
            continue
        owner_host, pid_text = owner.rsplit("-", 1)
        if owner_host == host:
            stale = not _process_alive(int(pid_text))
        else:
            stale = time.time() - path.stat().st_mtime > _FOREIGN_TEMPORARY_AGE_S
        if stale:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
