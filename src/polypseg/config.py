"""A training run's configuration, typed: :class:`TrainConfig` (YAML).

Every run writes its resolved configuration to ``RUN_DIR/config.yaml`` and into every checkpoint, so a
run can be repeated and a model rebuilt from what it saved. A weights folder's ``config.json`` is
:class:`polypseg.weights.config.WeightsConfig`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from polypseg.classes import DEFAULT_THRESHOLD, TASKS
from polypseg.errors import InputError, UsageError, one_line
from polypseg.files import atomic_write_text
from polypseg.model import DECODER_CONCATS

__all__ = [
    "AUGMENTATIONS",
    "RESUMABLE",
    "SCHEDULERS",
    "TrainConfig",
    "load_config",
    "parse_duration",
    "resume_conflicts",
    "save_config",
]

#: Augmentation presets (:func:`polypseg.data.build_augmentation`); ``True``/``False`` in old configs mean
#: ``"strong"``/``"none"``.
AUGMENTATIONS = ("none", "light", "robust", "strong")
#: Learning-rate schedules: the card's plateau, cosine over epochs, and one-cycle over the run's progress.
SCHEDULERS = ("plateau", "cosine", "onecycle")
_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


#: Bounds of the numbers a config may hold (a hostile or mistyped file must not build a huge model).
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 4096
MAX_BASE_CHANNELS = 256
MAX_HEAD_KERNEL_SIZE = 7
MAX_IMAGE_SIZE = 2048
MAX_BOUNDARY_WIDTH_PX = 64
_FLOAT_FIELDS = (
    "lr",
    "weight_decay",
    "min_lr",
    "ce_weight",
    "dice_weight",
    "plateau_factor",
    "warmup_fraction",
    "threshold",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value: Any, minimum: int, maximum: int) -> None:
    if not _is_int(value) or not minimum <= value <= maximum:
        raise UsageError(f"{name} must be an integer from {minimum} to {maximum}, got {value!r}")


def _check_number(name: str, value: Any, positive: bool = False) -> None:
    if not _is_number(value) or value < 0 or (positive and value == 0):
        raise UsageError(f"{name} must be a {'positive' if positive else 'non-negative'} number, got {value!r}")


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``"90s"``, ``"60m"``, ``"1.5h"``, ``"1h30m"`` or a number of seconds.

    Example:
        >>> parse_duration("1h30m"), parse_duration("45m"), parse_duration(90)
        (5400.0, 2700.0, 90.0)

    Raises:
        UsageError: Not a positive duration.
    """
    if isinstance(value, bool):
        raise UsageError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d+)?)(h|min|m|sec|s)?", text)
        if not text or "".join(number + unit for number, unit in parts) != text:
            raise UsageError(f"not a duration: {value!r} (use e.g. 90s, 60m, 1.5h, 1h30m)")
        seconds = sum(float(number) * _UNITS[unit or "s"] for number, unit in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f"a duration must be positive, got {value!r}")
    return seconds


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults are the model card's setup."""

    # Model
    base_channels: int = 64  # width of the first encoder stage (card: 64)
    head_kernel_size: int = 3  # reduction head conv kernel
    task: str = "multiclass"  # "multiclass" (the card: 3 classes, CE + Dice) or "binary" (1 channel, BCE + Dice)
    num_classes: int | None = None  # output channels: 3 or 1 (1 implies task: binary); default: the task's
    decoder_concat: str = "skip-up"  # decoder concatenation order: [skip, upsampled] or "up-skip"
    threshold: float = DEFAULT_THRESHOLD  # binary: polyp where the sigmoid probability is >= this
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
    # Identity: set by train() for every new run; resume refuses a checkpoint that carries another run's id
    run_id: str | None = None

    def __post_init__(self) -> None:
        for name in _FLOAT_FIELDS:  # YAML reads 1e-4 (no dot) as a string
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    setattr(self, name, float(value))
                except ValueError:
                    raise UsageError(f"{name} must be a number, got {value!r}") from None
        if isinstance(self.augment, bool):
            self.augment = "strong" if self.augment else "none"
        if self.augment not in AUGMENTATIONS:
            raise UsageError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if self.scheduler not in SCHEDULERS:
            raise UsageError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.task not in TASKS:
            raise UsageError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.num_classes is not None:
            if not _is_int(self.num_classes) or self.num_classes not in (1, 3):
                raise UsageError(f"num_classes must be 3 or 1 (binary), got {self.num_classes!r}")
            if self.num_classes == 1:
                self.task = "binary"
            elif self.task == "binary":
                raise UsageError("task: binary needs num_classes: 1 (or no num_classes), got num_classes: 3")
        if self.decoder_concat not in DECODER_CONCATS:
            raise UsageError(f"decoder_concat must be one of {', '.join(DECODER_CONCATS)}, got {self.decoder_concat!r}")
        _check_number("threshold", self.threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise UsageError(f"threshold must be from 0 to 1, got {self.threshold!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise UsageError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        # Numbers are bounded: a hand-edited or hostile config must not build a huge model or run for ever.
        _check_int("epochs", self.epochs, 1, MAX_EPOCHS)
        _check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        _check_int("base_channels", self.base_channels, 2, MAX_BASE_CHANNELS)
        if self.base_channels % 2:
            raise UsageError(f"base_channels must be even, got {self.base_channels}")
        _check_int("head_kernel_size", self.head_kernel_size, 1, MAX_HEAD_KERNEL_SIZE)
        if self.head_kernel_size % 2 != 1:
            raise UsageError(f"head_kernel_size must be odd (1, 3, 5 or 7), got {self.head_kernel_size}")
        _check_int("image_size", self.image_size, 16, MAX_IMAGE_SIZE)
        if self.image_size % 16:
            raise UsageError(f"image_size must be a multiple of 16, got {self.image_size}")
        _check_int("boundary_width_px", self.boundary_width_px, 0, MAX_BOUNDARY_WIDTH_PX)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        if self.max_images is not None:
            _check_int("max_images", self.max_images, 1, 10**9)
        for name in ("plateau_patience", "warmup_epochs", "num_workers"):
            _check_int(name, getattr(self, name), 0, 10**6)
        _check_int("log_every_n_steps", self.log_every_n_steps, 1, 10**9)
        _check_int("num_nodes", self.num_nodes, 1, 10**6)
        _check_number("lr", self.lr, positive=True)
        for name in ("weight_decay", "min_lr", "ce_weight", "dice_weight"):
            _check_number(name, getattr(self, name))
        _check_number("plateau_factor", self.plateau_factor)
        if not 0.0 < self.plateau_factor < 1.0:
            raise UsageError(f"plateau_factor must be between 0 and 1, got {self.plateau_factor!r}")
        if self.time_budget is not None:
            self.time_budget = parse_duration(self.time_budget)
        if self.ema_decay is not None:
            if isinstance(self.ema_decay, str):
                raise UsageError(f"ema_decay must be a number between 0 and 1 (e.g. 0.99), got {self.ema_decay!r}")
            _check_number("ema_decay", self.ema_decay)
            if not 0.0 < self.ema_decay < 1.0:
                raise UsageError(f"ema_decay must be between 0 and 1 (e.g. 0.99), got {self.ema_decay!r}")
        _check_number("warmup_fraction", self.warmup_fraction)
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise UsageError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if self.train_sizes is not None and not isinstance(self.train_sizes, list):
            raise UsageError(f"train_sizes must be a list of sizes, got {self.train_sizes!r}")
        for name, size in [("crop_size", self.crop_size), *(("train_sizes", s) for s in self.train_sizes or [])]:
            if size is not None and (not _is_int(size) or size < 16 or size % 16 or size > self.image_size):
                raise UsageError(
                    f"{name}: {size!r} must be a multiple of 16 between 16 and image_size ({self.image_size})"
                )
        sizes = self.split_sizes
        if not isinstance(sizes, (list, tuple)) or len(sizes) != 3:
            raise UsageError(f"split_sizes needs 3 values (train, val, test), got {sizes!r}")
        if not all(_is_number(v) and v >= 0 for v in sizes):
            raise UsageError(f"split_sizes must be 3 non-negative numbers (counts or fractions), got {sizes!r}")

    @property
    def out_channels(self) -> int:
        """The network's output channels: 1 for the binary task, else 3."""
        return 1 if self.task == "binary" else 3

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (YAML / JSON friendly)."""
        return dataclasses.asdict(self)

    def updated(self, **overrides: Any) -> TrainConfig:
        """Return a copy with ``overrides`` applied; ``None`` values are ignored (CLI defaults)."""
        values = {key: value for key, value in overrides.items() if value is not None}
        unknown = set(values) - {f.name for f in fields(self)}
        if unknown:
            raise UsageError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict, rejecting unknown keys with a clear message."""
        return cls().updated(**values)


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML config file; missing keys take the card's defaults.

    Raises:
        InputError: The file cannot be read, is not YAML, or holds a setting that cannot be used (named).
    """
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as error:  # ValueError: not UTF-8, a bad date or !!int
        raise InputError(path, f"cannot read config: {one_line(error)}") from None
    if not isinstance(values, dict):
        raise InputError(path, "a config must be a mapping of keys to values")
    try:
        return TrainConfig.from_dict(values)
    except (TypeError, UsageError) as error:  # TypeError: a key that is not a string
        raise InputError(path, one_line(error)) from None


#: The settings a resumed run may change; everything else is the run's own.
RESUMABLE = ("epochs", "time_budget")


def resume_conflicts(saved: TrainConfig, given: TrainConfig) -> list[str]:
    """``key=given`` for every setting of ``given`` that differs from the run's ``saved`` one.

    Only :data:`RESUMABLE` settings may change on resume; ``data_dir`` (checked against the run's split
    when the data are read) and ``run_id`` are not compared.
    """
    ignored = {*RESUMABLE, "data_dir", "run_id"}
    return [
        f"{f.name}={getattr(given, f.name)!r} (the run's: {getattr(saved, f.name)!r})"
        for f in fields(TrainConfig)
        if f.name not in ignored and getattr(given, f.name) != getattr(saved, f.name)
    ]


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write ``config`` as YAML (atomically)."""
    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))
