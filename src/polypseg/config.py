"""The training configuration: one typed dataclass, read from and written to YAML.

Every run writes its resolved configuration to ``RUN_DIR/config.yaml`` and into every checkpoint, so a
run can be repeated and a model rebuilt from what it saved.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from polypseg.io import atomic_write_text

__all__ = ["AUGMENTATIONS", "SCHEDULERS", "TrainConfig", "load_config", "parse_duration", "save_config"]

#: Augmentation presets (:func:`polypseg.data.build_augmentation`); ``True``/``False`` in old configs mean
#: ``"strong"``/``"none"``.
AUGMENTATIONS = ("none", "light", "robust", "strong")
#: Learning-rate schedules: the card's plateau, cosine over epochs, and one-cycle over the run's progress.
SCHEDULERS = ("plateau", "cosine", "onecycle")
_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``"90s"``, ``"60m"``, ``"1.5h"``, ``"1h30m"`` or a number of seconds.

    Example:
        >>> parse_duration("1h30m"), parse_duration("45m"), parse_duration(90)
        (5400.0, 2700.0, 90.0)

    Raises:
        ValueError: Not a positive duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d+)?)(h|min|m|sec|s)?", text)
        if not text or "".join(number + unit for number, unit in parts) != text:
            raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 60m, 1.5h, 1h30m)")
        seconds = sum(float(number) * _UNITS[unit or "s"] for number, unit in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults are the model card's setup."""

    # Model
    base_channels: int = 64  # width of the first encoder stage (card: 64)
    head_kernel_size: int = 3  # reduction head conv kernel
    # Data
    data_dir: str | None = None  # dataset folder (images/, masks/); recorded by train, reused by --resume
    image_size: int = 256  # training resolution (square)
    boundary_width_px: int = 3  # boundary class width at the training resolution
    split_sizes: list[float] = field(default_factory=lambda: [800, 100, 100])  # counts or fractions
    seed: int = 42  # split, initialisation and augmentation seed
    max_images: int | None = None  # use only the first N images (sorted by name): smoke runs
    augment: str = "none"  # joint image+mask augmentation (kornia): none, light, robust, strong (true = strong)
    crop_size: int | None = None  # train on random crops of this size (validation sees whole images)
    train_sizes: list[int] | None = None  # progressive resizing: e.g. [128, 192, 256], equal shares of the run
    init_weights: str | None = None  # start from weights (folder, file, hf://, or "bundled"), not random
    # Optimisation
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-4
    optimizer: str = "adam"  # "adam" (card) or "adamw" (decoupled weight decay)
    weight_decay: float = 0.0
    scheduler: str = "plateau"  # "plateau" (card), "cosine" (over epochs) or "onecycle" (over the run, per step)
    warmup_fraction: float = 0.05  # onecycle: share of the run spent warming up linearly to lr
    time_budget: float | None = None  # seconds of wall time (YAML/CLI also take "60m", "1.5h"): stop on time
    ema_decay: float | None = None  # exponential moving average of the weights, used for validation and best/
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    min_lr: float = 1e-6
    warmup_epochs: int = 0  # linear warm-up before the cosine schedule
    ce_weight: float = 0.5
    dice_weight: float = 0.5
    monitor: str = "val_dice"  # metric that picks best/ (card: validation Dice, 3-class mean)
    # Runtime
    precision: str = "auto"  # "auto", "32", "bf16-mixed", "16-mixed"
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # e.g. "ddp" for multi-GPU / multi-node (Lightning)
    channels_last: bool = True
    compile: bool = False  # torch.compile the model for training steps (pays off on long CPU runs)
    num_workers: int = 0  # the data are cached tensors; workers rarely pay off
    deterministic: bool = False
    log_every_n_steps: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.augment, bool):
            self.augment = "strong" if self.augment else "none"
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.time_budget is not None:
            self.time_budget = parse_duration(self.time_budget)
        if self.ema_decay is not None and not 0.0 < float(self.ema_decay) < 1.0:
            raise ValueError(f"ema_decay must be between 0 and 1 (e.g. 0.99), got {self.ema_decay!r}")
        if not 0.0 <= float(self.warmup_fraction) < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        for name, size in [("crop_size", self.crop_size), *(("train_sizes", s) for s in self.train_sizes or [])]:
            if size is not None and (not isinstance(size, int) or size < 16 or size % 16 or size > self.image_size):
                raise ValueError(
                    f"{name}: {size!r} must be a multiple of 16 between 16 and image_size ({self.image_size})"
                )
        if len(self.split_sizes) != 3:
            raise ValueError(f"split_sizes needs 3 values (train, val, test), got {self.split_sizes}")
        if self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16, got {self.image_size}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (YAML / JSON friendly)."""
        return dataclasses.asdict(self)

    def updated(self, **overrides: Any) -> TrainConfig:
        """Return a copy with ``overrides`` applied; ``None`` values are ignored (CLI defaults)."""
        values = {key: value for key, value in overrides.items() if value is not None}
        unknown = set(values) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict, rejecting unknown keys with a clear message."""
        return cls().updated(**values)


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML config file; missing keys take the card's defaults."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read config: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config must be a mapping of keys to values")
    try:
        return TrainConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write ``config`` as YAML (atomically)."""
    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))
