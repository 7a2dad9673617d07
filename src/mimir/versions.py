"""Software versions, recorded in every run folder so results can be traced and reproduced."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

_PACKAGES = ("numpy", "scipy", "pandas", "pydicom", "torch", "torchvision")


def software_versions() -> dict[str, str]:
    """Versions of MIMIR, Python and the libraries that shape its numbers (imports none)."""
    from mimir import __version__

    versions = {"mimir": __version__, "python": platform.python_version()}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["platform"] = platform.platform()
    versions["host"] = platform.node()
    versions["executable"] = sys.executable
    return versions
