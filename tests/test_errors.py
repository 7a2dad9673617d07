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
PRIVATE = {"_NotSimple", "_CompressionCancelled", "_Terminated"}


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


def test_errors_survive_pickling():
    """Worker processes (and clusters) hand errors back by pickle: type and message must survive.

    Classes with their own constructor (ExamReadError, IncompleteCrossvalError) define
    `__reduce__` and are tested where they live.
    """
    import pickle

    tested = 0
    for error_type in defined_exceptions():
        own_constructor = any("__init__" in vars(cls) for cls in error_type.__mro__ if cls.__module__.startswith("mimir"))
        if error_type.__name__ in PRIVATE or own_constructor:
            continue
        error = error_type("what went wrong")
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is error_type and str(copy) == "what went wrong", error_type
        tested += 1
    assert tested > 40


@pytest.mark.parametrize("error", [UnknownTargetError("unknown target 'x'"), PathNotFoundError("x.npy is missing")])
def test_the_message_reads_as_written_and_the_builtin_base_still_catches(error):
    assert str(error) == error.args[0]
    builtin = KeyError if isinstance(error, UnknownTargetError) else FileNotFoundError
    with pytest.raises(builtin):
        raise error
    assert error.exit_code == 2
