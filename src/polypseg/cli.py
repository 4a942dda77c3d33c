"""The ``polypseg`` command's old module path: :mod:`polypseg.apps.cli` (``python -m polypseg.cli`` works)."""

from polypseg.apps.cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
