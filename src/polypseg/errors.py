"""One-line errors: every error polypseg reports to a user names the file and fits on one line.

:class:`InputError` is an image, mask or other input file that cannot be used; :class:`WeightsError` is
weights that cannot be loaded. :func:`one_line` turns any library's message into one line.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["InputError", "WeightsError", "one_line"]


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (whitespace runs collapsed), or its type's name when it has none."""
    return " ".join(str(error).split()) or type(error).__name__


class InputError(ValueError):
    """A file that cannot be used; ``str(error)`` is a one-line message naming it."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        shown = str(path)
        # A file name may hold a newline or other control characters; the message stays one line.
        super().__init__(f"{shown if shown.isprintable() else ascii(shown)}: {problem}")


class WeightsError(ValueError):
    """Weights that cannot be loaded; the message names the file and the first tensor that does not fit."""
