"""What the ``polypseg`` subcommands share: the one-line parser, the default dataset, help texts and argument types."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import fields
from typing import Any, NoReturn, TypeVar

Options = TypeVar("Options")

DEFAULT_DATA = "../shared/datasets/kvasir-seg"
WEIGHTS_HELP = "weights folder, .safetensors, run folder or hf://OWNER/REPO[@REVISION] (default: bundled)"
TTA_HELP = "flip test-time augmentation: average the predictions of the image and its 3 flips (4x slower)"
CONCAT_HELP = (
    "decoder concatenation order of the weights: skip-up = cat([skip, upsampled]) (polypseg's), up-skip = "
    "cat([upsampled, skip]); default: what config.json records, else skip-up (`polypseg inspect --data` tells)"
)
THRESHOLD_HELP = (
    "binary weights (one output channel): polyp where the sigmoid probability is >= this, from 0 to 1 "
    "(default: the threshold recorded with the weights in config.json, else 0.5)"
)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``polypseg train: error: ... (see --help)``, exit code 2.

    argparse's own ``error`` prints the whole usage first, several lines; the ``polypseg`` parser is of this
    class, and ``add_subparsers`` makes every subcommand's parser of its parent's class.
    """

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see --help)`` on stderr and exit 2."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def add_weights_options(parser: argparse.ArgumentParser, threshold: bool = True) -> None:
    """``--decoder-concat`` (every command with ``--weights``) and ``--threshold`` (those that segment)."""
    parser.add_argument("--decoder-concat", default=None, choices=["skip-up", "up-skip"], help=CONCAT_HELP)
    if threshold:
        parser.add_argument("--threshold", type=number_between(0, 1), default=None, help=THRESHOLD_HELP)


def options_from(cls: type[Options], args: argparse.Namespace) -> Options:
    """The options dataclass ``cls`` filled from the parsed flags of the same names (``--batch-size``: ``batch_size``).

    So that each option is named once: a field of ``cls`` and the flag whose ``dest`` it is.
    """
    values: dict[str, Any] = {field.name: getattr(args, field.name) for field in fields(cls)}  # type: ignore[arg-type]
    return cls(**values)


def positive_int(text: str) -> int:
    """Argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def number_between(low: float, high: float) -> Callable[[str], float]:
    """Argparse type: a number from ``low`` to ``high`` (no NaN, no infinity)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not low <= value <= high:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"expected a number from {low:g} to {high:g}, got {text!r}")
        return value

    return parse
