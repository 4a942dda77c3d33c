"""Command line: thin subcommands over the library.

``polypseg train|evaluate|predict|demo|export|inspect|benchmark|card|push|data``.

Every subcommand parses its arguments and calls one library function. What a user gave that cannot be used
(:class:`~polypseg.errors.PolypsegError`) and a disk, permission or network failure (``OSError``) become
one line on stderr and exit code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from polypseg.apps import cli_models, cli_predict, cli_train
from polypseg.apps.cli_options import OneLineParser
from polypseg.apps.cli_predict import PredictOptions
from polypseg.errors import PolypsegError

__all__ = ["PredictOptions", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``polypseg`` command."""
    parser = OneLineParser(prog="polypseg", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    cli_train.add_subcommands(subparsers)  # train, evaluate
    cli_predict.add_subcommands(subparsers)  # predict, demo
    cli_models.add_subcommands(subparsers)  # export, inspect, benchmark, card, push, data
    for command_parser in subparsers.choices.values():
        command_parser.set_defaults(command_parser=command_parser)  # names the command in argument errors
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``polypseg`` command; returns the exit code."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # argparse's top-level parser would report them without naming the command
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        return args.handler(args)
    except (PolypsegError, OSError) as error:  # what a user gave, or a disk, permission or network; else a bug
        print(f"polypseg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (SystemExit, Terminated) as exit_:
        if isinstance(exit_, SystemExit) and not _is_sigterm(exit_):
            raise
        # Lightning stops train/evaluate on SIGTERM by raising SystemExit(None), which would exit 0. A run
        # stops between batches: its last completed epoch's checkpoint stands and --resume continues from it.
        # Elsewhere (loading data or weights, predict) _on_sigterm unwinds the command, so temporary files
        # are removed on the way out.
        print(f"polypseg {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return SIGTERM_EXIT_CODE
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


class Terminated(BaseException):
    """Raised by the SIGTERM handler of :func:`main` (a ``BaseException``, so ``except Exception`` lets it by)."""


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM outside Lightning's fit/test loops: unwind the command (``main`` then exits 143 with a line).

    While Lightning runs, its own handler is installed and calls this one after it; Lightning then stops
    between batches (``SIGTERMException``), so this handler does nothing.
    """
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        raise Terminated


#: The exit code of a command stopped by SIGTERM (128 + 15, as a shell reports a process killed by it).
SIGTERM_EXIT_CODE = 128 + 15


def _is_sigterm(exit_: SystemExit) -> bool:
    exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return exceptions is not None and isinstance(exit_, exceptions.SIGTERMException)


if __name__ == "__main__":
    sys.exit(main())
