"""The training configuration: one typed dataclass, read from and written to YAML.

Every run writes its resolved configuration to ``RUN_DIR/config.yaml`` and into every checkpoint, so a
run can be repeated and a model rebuilt from what it saved.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from polypseg.io import atomic_write_text

__all__ = ["TrainConfig", "load_config", "save_config"]


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
    augment: bool = False  # joint image+mask augmentation (kornia)
    init_weights: str | None = None  # start from weights (folder, file, hf://, or "bundled"), not random
    # Optimisation
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    scheduler: str = "plateau"  # "plateau" (card) or "cosine"
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
        if self.scheduler not in ("plateau", "cosine"):
            raise ValueError(f"scheduler must be 'plateau' or 'cosine', got {self.scheduler!r}")
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
