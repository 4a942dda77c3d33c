"""The ``config.json`` of a weights folder, typed and checked: :class:`WeightsConfig`.

Every weights folder holds ``model.safetensors`` (:data:`WEIGHTS_NAME`) and ``config.json``
(:data:`CONFIG_NAME`: architecture, classes, input size, training record); :meth:`WeightsConfig.read` checks
the file once and gives its fields typed, with a polypseg model's defaults where a key is absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polypseg.classes import DEFAULT_THRESHOLD, TASKS
from polypseg.config import TrainConfig
from polypseg.errors import UsageError, WeightsError, one_line
from polypseg.model import DECODER_CONCATS

__all__ = [
    "ARCHITECTURE_KEYS",
    "CONFIG_BOUNDS",
    "CONFIG_NAME",
    "MAX_CONFIG_BYTES",
    "MAX_INPUT_SIZE",
    "WEIGHTS_NAME",
    "WeightsConfig",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
ARCHITECTURE_KEYS = ("in_channels", "num_classes", "base_channels", "head_kernel_size", "decoder_concat")
#: Bounds of the integers of ``config.json`` (inclusive); ``input_size`` sides are at most :data:`MAX_INPUT_SIZE`.
CONFIG_BOUNDS = {
    "in_channels": (1, 64),
    "num_classes": (1, 256),
    "base_channels": (2, 256),
    "head_kernel_size": (1, 7),
    "boundary_width_px": (0, 64),
}
MAX_INPUT_SIZE = 2048
#: The largest ``config.json`` read (a hostile file must not take minutes to parse).
MAX_CONFIG_BYTES = 10_000_000


@dataclass(frozen=True)
class WeightsConfig:
    """The ``config.json`` of a weights folder, checked once and typed.

    ``raw`` is the file as read (every key, also those polypseg does not know); the properties give the
    fields polypseg uses, with the defaults of a polypseg model where the file (or the whole file) is absent.

    Example:
        >>> WeightsConfig({"input_size": [320, 320]}).input_size
        320
    """

    raw: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def read(cls, path: str | Path) -> WeightsConfig:
        """Read and check ``config.json`` (a missing file is an empty config).

        Raises:
            WeightsError: Not JSON, not an object, over 10 MB, or a number out of its bounds (named).
        """
        path = Path(path)
        if not path.exists():
            return cls({}, None)
        try:
            too_large = path.stat().st_size > MAX_CONFIG_BYTES
            raw = None if too_large else json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON, not UTF-8, a huge integer
            raise WeightsError(f"{path}: not valid JSON ({one_line(error)[:200]})") from None
        if too_large:
            raise WeightsError(f"{path}: not valid JSON (larger than 10 MB)")
        if not isinstance(raw, dict):
            raise WeightsError(f"{path}: must hold a JSON object")
        _check_weights_config(raw, path)
        return cls(raw, path)

    @property
    def architecture(self) -> dict[str, int]:
        """The U-Net's constructor arguments that the file records (empty for a foreign checkpoint)."""
        return {key: self.raw[key] for key in ARCHITECTURE_KEYS if key in self.raw}

    @property
    def decoder_concat(self) -> str | None:
        """The decoder concatenation order the file records (``None``: not recorded)."""
        order = self.raw.get("decoder_concat")
        return order if isinstance(order, str) else None

    @property
    def num_classes(self) -> int | None:
        """The output channels the file records (1: the binary variant), where recorded."""
        classes = self.raw.get("num_classes")
        return classes if isinstance(classes, int) else None

    @property
    def task(self) -> str | None:
        """``"binary"`` or ``"multiclass"`` as recorded (``task``, else from ``num_classes``); ``None`` if neither."""
        if isinstance(self.raw.get("task"), str):
            return str(self.raw["task"])
        return None if self.num_classes is None else ("binary" if self.num_classes == 1 else "multiclass")

    @property
    def threshold(self) -> float:
        """The binary variant's decision threshold recorded by training; 0.5 where not recorded."""
        return float(self.raw.get("threshold", DEFAULT_THRESHOLD))  # checked when read: a number from 0 to 1

    @property
    def base_channels(self) -> int | None:
        """The model's width, where recorded."""
        width = self.raw.get("base_channels")
        return width if isinstance(width, int) else None

    @property
    def input_size(self) -> int:
        """Side of the square network input (the training resolution); 256 where not recorded."""
        return int(self.raw.get("input_size", [256, 256])[0])

    @property
    def boundary_width_px(self) -> int:
        """Width of the boundary class at the input size; 3 where not recorded."""
        return int(self.raw.get("boundary_width_px", 3))

    @property
    def training(self) -> dict[str, Any]:
        """The training record (``config``, ``data_dir``, ``val_metrics``, ...), empty where there is none."""
        training = self.raw.get("training")
        return training if isinstance(training, dict) else {}

    @property
    def trained_on(self) -> str | None:
        """The dataset folder the weights were trained on, as recorded."""
        config = self.training.get("config")
        recorded = config.get("data_dir") if isinstance(config, dict) else None
        return str(recorded) if recorded else None

    def training_split(self) -> TrainConfig:
        """The training configuration's split settings (``split_sizes``, ``seed``, ``max_images``).

        The other fields take their defaults; the split is the one training made from these.

        Raises:
            WeightsError: A recorded setting is not valid (named, with this file).
        """
        try:
            training = self.raw.get("training", {}).get("config") or {}
            return TrainConfig().updated(
                **{key: training[key] for key in ("split_sizes", "seed", "max_images") if key in training}
            )
        except (TypeError, UsageError, AttributeError) as error:  # TypeError, AttributeError: not a mapping
            raise WeightsError(f"{self.path or CONFIG_NAME}: training.config: {one_line(error)}") from None


def _check_weights_config(config: dict[str, Any], path: Path) -> None:
    def is_int(value: Any, minimum: int, maximum: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= maximum

    # Every number is bounded: a hostile config.json must not build a huge model or run for ever.
    for key, (minimum, maximum) in CONFIG_BOUNDS.items():
        if key in config and not is_int(config[key], minimum, maximum):
            raise WeightsError(f"{path}: '{key}' must be an integer from {minimum} to {maximum}, got {config[key]!r}")
    if config.get("base_channels", 2) % 2:
        raise WeightsError(f"{path}: 'base_channels' must be even, got {config['base_channels']!r}")
    if config.get("head_kernel_size", 1) % 2 != 1:
        raise WeightsError(f"{path}: 'head_kernel_size' must be odd, got {config['head_kernel_size']!r}")
    for key, allowed in (("decoder_concat", DECODER_CONCATS), ("task", TASKS)):
        if key in config and config[key] not in allowed:
            raise WeightsError(f"{path}: '{key}' must be one of {', '.join(allowed)}, got {config[key]!r}")
    threshold = config.get("threshold", DEFAULT_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        raise WeightsError(f"{path}: 'threshold' must be a number from 0 to 1, got {threshold!r}")
    size = config.get("input_size", [16, 16])
    if not (
        isinstance(size, list) and len(size) == 2 and all(is_int(v, 16, MAX_INPUT_SIZE) and v % 16 == 0 for v in size)
    ):
        raise WeightsError(
            f"{path}: 'input_size' must be [height, width], multiples of 16 from 16 to {MAX_INPUT_SIZE}, got {size!r}"
        )
