"""Every error meant for a user derives from MimirError, and reads as written."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import mimir
from mimir.errors import MimirError, PathNotFoundError
from mimir.targets.catalog import UnknownTargetError

#: Exceptions that steer control flow inside one function and never reach a user.
PRIVATE = {"_NotSimple", "_CompressionCancelled"}


def defined_exceptions() -> list[type[BaseException]]:
    """Exception classes defined in mimir's modules (not `mimir.__main__`, which runs the CLI)."""
    found = []
    for info in pkgutil.walk_packages(mimir.__path__, "mimir."):
        if info.name == "mimir.__main__":
            continue
        module = importlib.import_module(info.name)
        found += [
            member for _, member in inspect.getmembers(module, inspect.isclass)
            if issubclass(member, BaseException) and member.__module__ == module.__name__
        ]
    return found


def test_every_user_facing_exception_derives_from_mimir_error():
    exceptions = defined_exceptions()
    assert len(exceptions) > 40
    assert {error.__name__ for error in exceptions} >= PRIVATE
    offenders = [
        f"{error.__module__}.{error.__name__}"
        for error in exceptions
        if error.__name__ not in PRIVATE and not issubclass(error, MimirError)
    ]
    assert offenders == []


@pytest.mark.parametrize("error", [UnknownTargetError("unknown target 'x'"), PathNotFoundError("x.npy is missing")])
def test_the_message_reads_as_written_and_the_builtin_base_still_catches(error):
    assert str(error) == error.args[0]
    builtin = KeyError if isinstance(error, UnknownTargetError) else FileNotFoundError
    with pytest.raises(builtin):
        raise error
    assert error.exit_code == 2
