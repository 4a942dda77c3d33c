"""One-line errors: every error polypseg reports to a user names the file or setting and fits on one line.

All of them derive from :class:`PolypsegError`; the command line turns exactly these (and ``OSError``: a
disk, a permission, a network) into one line on stderr and exit code 2. Any other exception is a bug in
polypseg and keeps its traceback.

- :class:`InputError`: an image, mask or other input file that cannot be used.
- :class:`WeightsError`: weights that cannot be loaded.
- :class:`UsageError`: a setting, option or argument that cannot be used (out of range, or not together
  with another one), or a request that cannot be met (an empty split, no dataset folder).
- :class:`MissingExtraError`: an optional extra (OpenVINO, onnxruntime, Gradio, PyAV) is not installed; the
  message says what to install.

``InputError``, ``WeightsError`` and ``UsageError`` are ``ValueError`` s and ``MissingExtraError`` is an
``ImportError``, so code that caught those before keeps working. :func:`one_line` turns any library's
message into one line.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["InputError", "MissingExtraError", "PolypsegError", "UsageError", "WeightsError", "one_line"]


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (whitespace runs collapsed), or its type's name when it has none."""
    return " ".join(str(error).split()) or type(error).__name__


class PolypsegError(Exception):
    """The base of the errors polypseg reports to a user: ``str(error)`` is one line that says what is wrong."""


class InputError(PolypsegError, ValueError):
    """A file that cannot be used; ``str(error)`` is a one-line message naming it."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        shown = str(path)
        # A file name may hold a newline or other control characters; the message stays one line.
        super().__init__(f"{shown if shown.isprintable() else ascii(shown)}: {problem}")


class WeightsError(PolypsegError, ValueError):
    """Weights that cannot be loaded; the message names the file and the first tensor that does not fit."""


class UsageError(PolypsegError, ValueError):
    """A setting, option or argument that cannot be used; the message names it and says why.

    Example:
        >>> raise UsageError("batch_size must be from 1 to 4096, got 0")
        Traceback (most recent call last):
        ...
        polypseg.errors.UsageError: batch_size must be from 1 to 4096, got 0
    """


class MissingExtraError(PolypsegError, ImportError):
    """An optional extra is not installed; the message names it and the ``pip install`` that adds it."""
