"""Callbacks of a training run: ``best/`` on improvement, ``metrics.csv`` and ``last.ckpt`` every epoch.

:class:`EpochCSVLogger` and :class:`LastCheckpoint` run in that order at the end of a validated epoch, so
``metrics.csv`` never lacks the row of an epoch that a resumed run will not repeat; ``best/`` is replaced
as a whole (:func:`polypseg.files.atomic_write_folder`).
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from polypseg.classes import CLASS_NAMES
from polypseg.errors import InputError, one_line
from polypseg.files import atomic_write_csv, atomic_write_folder
from polypseg.training.module import SegmentationModule
from polypseg.weights import save_pretrained

__all__ = ["BestWeightsExporter", "EpochCSVLogger", "LastCheckpoint"]


class BestWeightsExporter(Callback):
    """Write ``best/`` (safetensors + config.json) whenever the monitored validation metric improves.

    The folder is replaced as a whole (:func:`polypseg.files.atomic_write_folder`), so its weights and its
    config always come from the same epoch, even if the process is killed while writing.
    """

    def __init__(self, folder: Path, monitor: str, metadata: dict[str, Any]) -> None:
        self.folder, self.monitor, self.metadata = folder, monitor, metadata
        self.best: float | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        current = float(value)
        if self.best is not None and not current > self.best:
            return
        self.best = current
        metrics = {k: round(float(v), 6) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        metadata = {
            **self.metadata,
            "training": {**self.metadata.get("training", {}), "epoch": trainer.current_epoch, "val_metrics": metrics},
        }
        model = pl_module.eval_model if isinstance(pl_module, SegmentationModule) else pl_module.model
        with atomic_write_folder(self.folder) as staging:
            save_pretrained(model, staging, metadata=metadata)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")


class _EpochValidated(Callback):
    """Knows whether the current epoch has been validated.

    True at the end of a finished epoch; False for one cut short by ``max_steps`` and for the end-of-epoch
    hook that Lightning repeats when it resumes from an end-of-epoch checkpoint.
    """

    def __init__(self) -> None:
        self.validated = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validated = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validated = not trainer.sanity_checking


class LastCheckpoint(_EpochValidated):
    """Save ``last.ckpt`` at the end of every finished training epoch (after validation).

    Listed after :class:`EpochCSVLogger`, it runs after the epoch's ``metrics.csv`` row is written; the
    learning-rate schedulers have stepped already (Lightning steps epoch schedulers after the last batch,
    and :class:`SegmentationModule` steps ReduceLROnPlateau itself at the end of validation). Lightning's
    ``ModelCheckpoint(save_top_k=0, save_last=True)`` never saves during training, so it is not used.
    Mid-epoch checkpoints are not written: Lightning would replay such an epoch from its first batch.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.validated:
            trainer.save_checkpoint(self.path)


class EpochCSVLogger(_EpochValidated):
    """One row per finished epoch in ``metrics.csv`` (rewritten atomically; later rows dropped on resume).

    It runs before :class:`LastCheckpoint` (listed before it), so the file never lacks the row of an
    epoch that a resumed run will not repeat.
    """

    COLUMNS = (
        "epoch",
        "train_loss",
        "val_loss",
        "val_dice",
        "val_polyp_dice",
        *(f"val_dice_{n}" for n in CLASS_NAMES),
        "lr",
        "seconds",
    )

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._start = time.perf_counter()
        self._lr = math.nan

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._start = time.perf_counter()
        # The epoch's own learning rate: epoch schedulers step before the epoch-end hooks run.
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.validated:
            return
        metrics = trainer.callback_metrics
        row: dict[str, Any] = {"epoch": trainer.current_epoch}
        for column in self.COLUMNS[1:-2]:
            key = "train_loss_epoch" if column == "train_loss" else column
            row[column] = f"{float(metrics[key]):.6f}" if key in metrics else ""
        if isinstance(pl_module, SegmentationModule) and pl_module._stepwise_schedule():
            self._lr = trainer.optimizers[0].param_groups[0]["lr"]  # set per step: the epoch's last rate
        row["lr"] = f"{self._lr:.3g}"
        row["seconds"] = f"{time.perf_counter() - self._start:.1f}"
        rows = []
        if self.path.exists():
            try:
                with self.path.open(newline="", encoding="utf-8") as handle:
                    rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) < trainer.current_epoch]
            except (UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as error:  # a hand-edited file
                raise InputError(self.path, f"cannot read the run's epochs ({one_line(error)})") from None
        atomic_write_csv(self.path, self.COLUMNS, [*rows, row], durable=True)
