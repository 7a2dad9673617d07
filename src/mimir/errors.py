"""The root of every error meant for a person running MIMIR.

Library code raises subclasses of `MimirError` for input, option and data problems that a user
can fix; the CLI turns any of them into one line on stderr and `exit_code`, in one place
(`mimir.cli.main`). Anything else is a bug and keeps its traceback. Subclasses usually also
derive from the builtin exception that fits (ValueError, FileNotFoundError, ...), so callers
that catch those keep working.
"""

from __future__ import annotations


class MimirError(Exception):
    """A problem with the inputs, options or data that the user can fix; its message says how."""

    #: Process exit status of the `mimir` command when this error ends it (2: misuse, as argparse).
    exit_code: int = 2

    def __str__(self) -> str:
        # The message as written, also for KeyError subclasses, whose str() would quote it.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class PathNotFoundError(MimirError, FileNotFoundError):
    """A file or folder the user named (or that a named folder should hold) does not exist."""
