"""The `mimir` command: one subcommand per pipeline stage, each a thin layer over the library.

Each subcommand lives in its own module here and registers its parser; modules import heavy
libraries (numpy, torch) only inside their handlers, so `mimir --help` stays instant. Every
`MimirError` a handler lets through becomes one line on stderr and its exit code, here in `main`.
Flags that several commands share are defined once, in `common_flags`; -q and -v are accepted
before and after the subcommand.
SIGTERM (from `timeout`, a batch scheduler or `kill`) ends a command as Ctrl-C does, through the
same cleanup, with exit status 143.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

from mimir import __version__
from mimir.cli import (
    catalog_cmd,
    compress_cmd,
    config_cmd,
    crossval_cmd,
    demo_cmd,
    evaluate_cmd,
    explain_cmd,
    module_cmd,
    predict_cmd,
    show_cmd,
    synth_cmd,
    targets_cmd,
    train_cmd,
)
from mimir.cli.common_flags import add_verbosity_everywhere, warn_renamed_flags
from mimir.errors import MimirError

#: Subcommand modules in the order `mimir --help` lists them (pipeline order).
COMMANDS = (
    synth_cmd,
    compress_cmd,
    targets_cmd,
    train_cmd,
    crossval_cmd,
    evaluate_cmd,
    module_cmd,
    predict_cmd,
    show_cmd,
    explain_cmd,
    demo_cmd,
    catalog_cmd,
    config_cmd,
)


class UsageError(MimirError):
    """Misuse of a command found by the CLI itself (bad flags, missing inputs)."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as a KeyboardInterrupt so that it unwinds through the
    cleanup Ctrl-C gets: worker processes terminated, temporaries removed, nothing half-written."""


#: Exit statuses of a command ended by Ctrl-C and by SIGTERM (128 + the signal, as shells report).
INTERRUPTED_EXIT = 128 + signal.SIGINT
TERMINATED_EXIT = 128 + signal.SIGTERM


#: Exit status of a command whose reader closed its output early (`mimir catalog | head`), as
#: a shell reports a process ended by SIGPIPE.
BROKEN_PIPE_EXIT = 128 + signal.SIGPIPE


def _silence_closed_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again on the
    closed pipe (and print a second traceback)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into `_Terminated` while a command runs (signals reach only the main thread;
    `main` called from another thread keeps the default, immediate end)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimir",
        description="Calibrated body measurements from UK Biobank neck-to-knee MRI.",
    )
    parser.add_argument("--version", action="version", version=f"mimir {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    predict_cmd.register_merge(subparsers)
    add_verbosity_everywhere(parser)
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 and not quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _two_word_commands(argv: Sequence[str]) -> list[str]:
    """`predict merge ...` -> `predict-merge ...` (the first two words that are not options)."""
    words = list(argv)
    positions = [index for index, word in enumerate(words) if not word.startswith("-")][:2]
    if len(positions) == 2 and positions[1] == positions[0] + 1 and [words[i] for i in positions] == ["predict", "merge"]:
        words[positions[0]: positions[1] + 1] = [predict_cmd.MERGE_COMMAND]
    return words


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """The parse `main` does, two-word commands (`predict merge`) included."""
    return parser.parse_args(_two_word_commands(argv))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_arguments(parser, sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 2
    _configure_logging(args.verbose, args.quiet)
    warn_renamed_flags(args)
    try:
        with _sigterm_interrupts():
            return int(args.handler(args) or 0)
    except MimirError as error:
        print(f"mimir {args.command.replace('-', ' ')}: error: {error}", file=sys.stderr)
        return error.exit_code
    except _Terminated:
        print("terminated", file=sys.stderr)
        return TERMINATED_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    except BrokenPipeError:
        _silence_closed_stdout()
        return BROKEN_PIPE_EXIT


if __name__ == "__main__":
    sys.exit(main())
