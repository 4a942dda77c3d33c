"""The one training and evaluation loop (Lightning), used by the CLI, the tests and the demo alike.

:func:`train` runs a configuration on a dataset folder and writes a run folder::

    RUN_DIR/config.yaml      the resolved configuration
    RUN_DIR/splits.json      the train/val/test split (reusable with --splits)
    RUN_DIR/metrics.csv      one row per epoch: train/val loss, val Dice, lr, time
    RUN_DIR/best/            weights folder of the best epoch (by ``config.monitor``)
    RUN_DIR/checkpoints/last.ckpt   resumable Lightning checkpoint (config inside)

Crash safety: ``last.ckpt`` is saved at the end of every epoch, after the epoch's ``metrics.csv`` row,
``best/`` and learning-rate step (:class:`LastCheckpoint`); it is written to a temporary file beside
it, flushed to disk and renamed (:class:`AtomicCheckpointIO`). ``best/`` is written as a new folder
that replaces the old one (:func:`polypseg.io.atomic_write_folder`). A run killed at any moment
therefore resumes (``resume=True``) at the start of the epoch it was in (from the beginning if it was
killed in its first epoch). Batch order and augmentation depend only on the seed and the epoch number,
so the resumed run repeats exactly what the uninterrupted run would have done (bit for bit with
``deterministic: true``).

:func:`evaluate` scores a model on cached pairs with the same LightningModule's test step (optionally
with flip test-time augmentation, :func:`polypseg.tta.flip_tta`).
"""

from __future__ import annotations

import csv
import errno
import functools
import io
import logging
import math
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, Timer
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, RandomSampler

from polypseg.classes import CLASS_NAMES, class_names_for, classes_to_mask, logits_to_classes, mask_to_classes
from polypseg.config import TrainConfig, save_config
from polypseg.data import (
    CachedPairs,
    TensorPairDataset,
    build_augmentation,
    find_pairs,
    load_pairs,
    load_splits,
    make_splits,
    save_splits,
)
from polypseg.hardware import resolve_precision
from polypseg.io import (
    atomic_save,
    atomic_write_folder,
    atomic_write_text,
    recover_folder,
    remove_stale_temporaries,
)
from polypseg.losses import CombinedLoss, soft_dice
from polypseg.metrics import SegmentationMetrics, class_counts, ratio
from polypseg.model import UNet
from polypseg.tta import flip_tta
from polypseg.weights import save_pretrained

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "EpochShuffleSampler",
    "EvaluationResult",
    "LastCheckpoint",
    "SegmentationModule",
    "TrainResult",
    "evaluate",
    "load_checkpoint",
    "train",
]

LAST_CHECKPOINT = "checkpoints/last.ckpt"


class CheckpointError(ValueError):
    """A Lightning checkpoint that cannot be resumed from; the message names the file."""


def _derived_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (stable across Python versions and processes)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1, dtype=np.uint64)[0] >> 1)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written crash-safely and read back without unpickling code.

    ``save_checkpoint`` writes to a temporary file in the checkpoint's own folder, flushes it to disk and
    renames it over the old checkpoint, so ``last.ckpt`` is always a complete checkpoint (Lightning's own
    writer stages in the system temp folder and moves the file, which is a copy when /tmp is another
    disk). ``load_checkpoint`` uses ``torch.load(weights_only=True)`` (tensors and plain containers only)
    and turns a damaged or truncated file into a :class:`CheckpointError` naming it.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        path = Path(path)
        try:
            atomic_save(path, lambda temporary: torch.save(checkpoint, temporary), durable=True)
        except (RuntimeError, OSError) as error:  # torch reports a full disk as "basic_ios::clear" or similar
            reason = _write_failure(error, path.parent)
            if reason is None:
                raise
            raise OSError(f"{path}: cannot save checkpoint ({reason})") from None

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> Any:
        return load_checkpoint(path, map_location=map_location if map_location is not None else "cpu")


_WRITER_ERRORS = ("basic_ios", "iostream", "inline_container", "PytorchStreamWriter", "file write failed")


def _write_failure(error: BaseException, folder: Path) -> str | None:
    """Why a write failed, in words ("No space left on device" when the disk is full); None: not a write error."""
    if isinstance(error, OSError):
        return error.strerror or " ".join(str(error).split())
    try:
        if shutil.disk_usage(folder).free < 64 << 20:
            return os.strerror(errno.ENOSPC)
    except OSError:
        pass
    text = " ".join(str(error).split())
    return text[:200] if any(marker in text for marker in _WRITER_ERRORS) else None


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Read a Lightning checkpoint of a polypseg run (``weights_only``: nothing but tensors and plain data).

    Raises:
        CheckpointError: The file is missing, truncated, damaged or holds more than tensors and plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:  # torch.load raises many types on damaged files
        detail = " ".join(str(error).split())[:200] or type(error).__name__
        raise CheckpointError(
            f"{path}: damaged or incomplete checkpoint, cannot resume from it ({detail}); "
            "start a new run or restore the file"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning checkpoint of a polypseg run")
    return checkpoint


class EpochShuffleSampler(RandomSampler):
    """Shuffles anew in every epoch, as a function of ``(seed, epoch)`` only.

    A resumed run therefore sees the same batches as an uninterrupted one (a generator that is drawn
    from epoch after epoch would restart its sequence on resume). Lightning calls :meth:`set_epoch`
    before every epoch; under DDP it replaces this sampler by a ``DistributedSampler``, which is keyed
    by (seed, epoch) the same way.
    """

    def __init__(self, data_source: Any, seed: int) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Any:
        generator = torch.Generator().manual_seed(_derived_seed(self.seed, self.epoch))
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class _IndexedPairs(TensorPairDataset):
    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:  # type: ignore[override]
        image, mask = super().__getitem__(index)
        return image, mask, index


def _ema_average(
    averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor, decay: float
) -> torch.Tensor:
    """One EMA step; the decay warms up as ``(1 + n) / (10 + n)`` so early averages are not stuck at the start.

    Integer buffers (BatchNorm's batch counter) take the current value.
    """
    if not averaged.is_floating_point():
        return current
    effective = min(decay, (1.0 + float(num_averaged)) / (10.0 + float(num_averaged)))
    return averaged + (current - averaged) * (1.0 - effective)


def one_cycle_factor(progress: float, warmup_fraction: float, floor: float) -> float:
    """Learning-rate factor at ``progress`` in [0, 1] of a run: linear warm-up, then cosine down to ``floor``.

    Example:
        >>> one_cycle_factor(0.05, 0.1, 0.0), one_cycle_factor(0.1, 0.1, 0.0), one_cycle_factor(1.0, 0.1, 0.01)
        (0.5, 1.0, 0.01)
    """
    progress = min(max(progress, 0.0), 1.0)
    if warmup_fraction > 0 and progress < warmup_fraction:
        return max(progress / warmup_fraction, 1e-3)
    tail = (progress - warmup_fraction) / max(1.0 - warmup_fraction, 1e-9)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * tail))


class SegmentationModule(L.LightningModule):
    """U-Net + the card's loss + the project's metrics, for training, validation and testing.

    The resolved :class:`TrainConfig` is saved as hyperparameters, so it lives in every checkpoint.

    Beyond the card's recipe (all off by default, see :class:`TrainConfig`): AdamW, a one-cycle schedule
    over the run's progress (steps, or wall time under ``time_budget``), random crops and progressive
    resizing of the training batches, and an exponential moving average of the weights (``ema_decay``)
    that validation and ``best/`` use.

    Args:
        config: The training configuration (dict form, as stored in checkpoints).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.config = TrainConfig.from_dict(config)
        self.model = UNet(
            3,
            self.config.out_channels,
            self.config.base_channels,
            self.config.head_kernel_size,
            self.config.decoder_concat,
        )
        #: The class map's classes: background, polyp, boundary; or background, polyp for the binary task.
        self.class_names = class_names_for(self.config.out_channels)
        self.loss = CombinedLoss(self.config.ce_weight, self.config.dice_weight)
        self.augmentation = build_augmentation(self.config.augment)
        #: EMA of the weights (PyTorch's AveragedModel, buffers included); validation and best/ use it.
        self.ema = (
            AveragedModel(
                self.model, avg_fn=functools.partial(_ema_average, decay=float(self.config.ema_decay)), use_buffers=True
            )
            if self.config.ema_decay
            else None
        )
        self.val_metrics = SegmentationMetrics(self.class_names, threshold=self.config.threshold)
        self.test_metrics = SegmentationMetrics(self.class_names, literature=True, threshold=self.config.threshold)
        self.test_rows: list[dict[str, Any]] = []
        self.test_names: list[str] = []
        #: Test with flip test-time augmentation: loss and every metric use the averaged prediction.
        self.test_tta = False
        #: Ground-truth polyp boxes by dataset index, at the evaluation resolution (else: from the masks).
        self.test_truth_boxes: dict[int, list[tuple[int, int, int, int]]] = {}
        self._loss_sum = 0.0
        self._loss_images = 0
        self._plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict[str, Any] | None = None
        self._channels_last()
        # A compiled forward (not a registered submodule: the state dict keeps the plain model's names).
        object.__setattr__(self, "_compiled", torch.compile(self.model) if self.config.compile else None)

    def _channels_last(self) -> None:
        if self.config.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, H, W) of images (B, 3, H, W) in [0, 1] (C: 3, or 1 for the binary task)."""
        return self.model(images)

    @property
    def eval_model(self) -> UNet:
        """The network that validation scores and ``best/`` saves: the EMA weights where enabled."""
        return self.ema.module if self.ema is not None else self.model  # type: ignore[return-value]

    def progress(self) -> float:
        """How far the run is, in [0, 1]: wall time over ``time_budget``, else steps over all steps."""
        trainer = self.trainer
        budget = self.config.time_budget
        if budget:
            timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)  # type: ignore[attr-defined]
            value = timer.time_elapsed("train") / budget if timer is not None else 0.0
            if trainer.world_size > 1:  # every rank must take the same learning rate and size
                value = float(trainer.strategy.broadcast(value))
        else:
            value = trainer.global_step / max(float(trainer.estimated_stepping_batches), 1.0)
        return min(max(value, 0.0), 1.0)

    def _stepwise_schedule(self) -> bool:
        return self.config.scheduler == "onecycle" or (
            self.config.scheduler == "cosine" and bool(self.config.time_budget)
        )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._stepwise_schedule():
            config = self.config
            warmup = config.warmup_fraction
            if config.scheduler == "cosine":
                warmup = config.warmup_epochs / max(config.epochs, 1)
            lr = config.lr * one_cycle_factor(self.progress(), warmup, config.min_lr / config.lr)
            for group in self.trainer.optimizers[0].param_groups:
                group["lr"] = lr

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def train_size(self) -> int:
        """Side of the training batches now: the progressive-resizing stage, else the cache's size."""
        sizes = self.config.train_sizes
        if not sizes:
            return self.config.image_size
        return sizes[min(int(self.progress() * len(sizes)), len(sizes) - 1)]

    def on_train_epoch_start(self) -> None:
        if self.augmentation is not None:
            # Augmentation draws from torch's global generator: key it to (seed, epoch, rank) so that a
            # resumed run augments exactly like an uninterrupted one.
            torch.manual_seed(_derived_seed(self.config.seed, self.current_epoch, self.global_rank))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 images/masks -> float images in [0, 1] (augmented when training) and class targets."""
        images, masks, index = batch
        images = images.float() / 255.0
        masks = masks.bool()
        training = self.trainer is not None and self.trainer.training
        if self.augmentation is not None and training:
            images, augmented = self.augmentation(images, masks[:, None].float())
            images, masks = images.clamp(0.0, 1.0), augmented[:, 0] > 0.5
        # The classes are made at the cache's resolution (where boundary_width_px is defined), then cropped
        # and resized with the images, so a smaller training size keeps the same boundary. The binary task
        # has no boundary class: its targets are the mask (0 background, 1 polyp).
        boundary = self.config.boundary_width_px if self.config.task == "multiclass" else 0
        targets = mask_to_classes(masks, boundary)
        if training:
            images, targets = self._crop_and_resize(images, targets)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.long(), index

    def _crop_and_resize(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        crop = self.config.crop_size
        if crop is not None and crop < images.shape[-1]:
            # One random window per image, drawn from torch's generator (keyed to seed and epoch).
            limit = images.shape[-1] - crop + 1
            corners = torch.randint(0, limit, (len(images), 2)).tolist()
            windows = list(zip(images, corners, strict=True))
            images = torch.stack([im[:, y : y + crop, x : x + crop] for im, (y, x) in windows])
            targets = torch.stack([t[y : y + crop, x : x + crop] for t, (y, x) in zip(targets, corners, strict=True)])
        size = self.train_size()
        if crop is not None:
            size = round(size * crop / self.config.image_size / 16) * 16 or 16
        if size != images.shape[-1]:
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            targets = F.interpolate(targets[:, None].float(), size=(size, size), mode="nearest")[:, 0].to(targets.dtype)
        return images, targets

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, targets, _ = batch
        logits = self._compiled(images) if self._compiled is not None else self(images)
        loss = self.loss(logits, targets)
        dice = soft_dice(logits.detach(), targets)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(images))
        self.log("dice", dice, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(images))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, targets, _ = batch
        logits = self.eval_model(images)
        self.log(
            "val_loss", self.loss(logits, targets), prog_bar=True, on_epoch=True, batch_size=len(images), sync_dist=True
        )
        self.val_metrics.update(logits_to_classes(logits, self.config.threshold).long(), targets)

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metrics.compute()
        self.val_metrics.reset()
        # torchmetrics has already gathered every rank's counts; sync_dist only keeps Lightning informed.
        self.log("val_dice", scores["mean_dice"], prog_bar=True, sync_dist=True)
        self.log("val_polyp_dice", scores["polyp_dice"], prog_bar=True, sync_dist=True)
        for name in self.class_names:
            self.log(f"val_dice_{name}", scores[f"dice_{name}"], sync_dist=True)

    def on_validation_end(self) -> None:
        # ReduceLROnPlateau is stepped here rather than by Lightning, which steps it after the epoch's
        # checkpoint and skips that step when resuming: a resumed run would lose one plateau step.
        if (
            self._plateau is not None
            and not self.trainer.sanity_checking
            and "val_loss" in self.trainer.callback_metrics
        ):
            self._plateau.step(float(self.trainer.callback_metrics["val_loss"]))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._plateau is not None:
            checkpoint["plateau_scheduler"] = self._plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._plateau_state = checkpoint.get("plateau_scheduler")
        if self._plateau is not None and self._plateau_state is not None:  # optimizers already configured
            self._plateau.load_state_dict(self._plateau_state)

    def on_test_epoch_start(self) -> None:
        self.test_rows, self._loss_sum, self._loss_images = [], 0.0, 0

    def test_step(self, batch: Any, batch_idx: int) -> None:
        images, targets, index = batch
        # With TTA: log-probabilities, whose softmax/argmax/cross-entropy are those of the mean prediction.
        logits = flip_tta(self, images) if self.test_tta else self(images)
        loss = self.loss(logits, targets)
        self._loss_sum += float(loss) * len(images)
        self._loss_images += len(images)
        boxes = [self.test_truth_boxes.get(i, []) for i in index.tolist()] if self.test_truth_boxes else None
        self.test_metrics.update(logits, targets, truth_boxes=boxes)
        scores = self.test_metrics.last_image_scores
        pred = logits_to_classes(logits, self.config.threshold).long()
        for row, i in enumerate(index.tolist()):
            counts = class_counts(pred[row], targets[row], len(self.class_names))
            tp, fp, fn = counts.unbind(1)
            class_dice = ratio(2 * tp, 2 * tp + fp + fn, (fp == 0) & (fn == 0))
            self.test_rows.append(
                {
                    "name": self.test_names[i] if i < len(self.test_names) else str(i),
                    **{f"polyp_{k}": float(scores[k][row]) for k in ("dice", "iou", "precision", "recall")},
                    "polyp_mean_dice_pranet": float(scores["mean_dice_pranet"][row]),
                    **{f"dice_{n}": float(class_dice[c]) for c, n in enumerate(self.class_names)},
                    "polyp_pixels_true": int(classes_to_mask(targets[row]).sum()),
                    "polyp_pixels_pred": int(classes_to_mask(pred[row]).sum()),
                    **{k: int(scores[k][row]) for k in ("polyps_true", "polyps_detected", "polyps_matched")},
                }
            )

    def configure_optimizers(self) -> Any:
        config = self.config
        kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        optimizer = kind(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        if self._stepwise_schedule():
            return optimizer  # the learning rate is set before every step (on_train_batch_start)
        if config.scheduler == "plateau":
            self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="min",
                factor=config.plateau_factor,
                patience=config.plateau_patience,
                min_lr=config.min_lr,
            )
            if self._plateau_state is not None:
                self._plateau.load_state_dict(self._plateau_state)
            return optimizer  # stepped in on_validation_end
        warmup, total = config.warmup_epochs, max(config.epochs, 1)
        floor = config.min_lr / config.lr

        def factor(epoch: int) -> float:
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            progress = (epoch - warmup) / max(total - warmup, 1)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class BestWeightsExporter(Callback):
    """Write ``best/`` (safetensors + config.json) whenever the monitored validation metric improves.

    The folder is replaced as a whole (:func:`polypseg.io.atomic_write_folder`), so its weights and its
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
            with self.path.open(newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) < trainer.current_epoch]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.COLUMNS)
        writer.writeheader()
        writer.writerows([*rows, row])
        atomic_write_text(self.path, buffer.getvalue(), durable=True)


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    run_dir: Path
    best_dir: Path
    best_score: float | None
    epochs_run: int
    is_global_zero: bool = True


def _quiet_lightning() -> None:
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", ".*number of training batches.*smaller than the logging interval.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def _trainer(config: TrainConfig, run_dir: Path | None, callbacks: list[Callback], **kwargs: Any) -> L.Trainer:
    _quiet_lightning()
    return L.Trainer(
        plugins=[AtomicCheckpointIO()],
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=resolve_precision(config.precision, config.accelerator),  # type: ignore[arg-type]
        deterministic=config.deterministic,
        default_root_dir=run_dir,
        callbacks=callbacks,
        logger=False,
        log_every_n_steps=config.log_every_n_steps,
        **kwargs,
    )


def _loader(pairs: CachedPairs, config: TrainConfig, shuffle: bool) -> DataLoader:
    dataset = _IndexedPairs(pairs)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=EpochShuffleSampler(dataset, config.seed) if shuffle else None,
        drop_last=False,
        num_workers=config.num_workers,
    )


def _process_rank() -> int:
    """Global rank of this process from the launcher's environment (0 when not distributed).

    Lightning's DDP launcher re-runs the command in child processes, and torchrun/SLURM start all ranks
    at once: only rank 0 prepares the run folder; the others compute the same seeded split.
    """
    return rank_zero_only.rank


def train(
    config: TrainConfig,
    data_dir: str | Path | None,
    run_dir: str | Path,
    resume: bool = False,
    splits_file: str | Path | None = None,
    max_steps: int = -1,
) -> TrainResult:
    """Train a U-Net on a Kvasir-SEG style folder and write the run folder.

    Args:
        config: The run's configuration (``configs/seed.yaml`` is the card's).
        data_dir: Folder with ``images/`` and ``masks/`` (``None``: ``config.data_dir``, e.g. on resume).
        run_dir: Output folder. Must be new or empty unless ``resume``.
        resume: Continue from ``RUN_DIR/checkpoints/last.ckpt`` with the run's saved config and split
            (for example after the process was killed). Only resume run folders you made: the checkpoint
            is read with ``torch.load(weights_only=True)``, but it is still a pickle.
        splits_file: Use this ``splits.json`` instead of a fresh seeded split.
        max_steps: Stop after this many optimizer steps (-1: run all epochs); for tests and smoke runs.

    Returns:
        Where the best weights are and their validation score.

    Raises:
        DatasetError: An image or mask cannot be used (all are named) - before anything is written.
        CheckpointError: On resume, ``last.ckpt`` is damaged or truncated.
    """
    from polypseg.config import load_config

    run_dir = Path(run_dir)
    last = run_dir / LAST_CHECKPOINT
    checkpoint: dict[str, Any] | None = None
    if resume:
        if not (run_dir / "config.yaml").exists():
            raise FileNotFoundError(f"{last}: no checkpoint to resume from ({run_dir} holds no run)")
        if _process_rank() == 0:
            # Leftovers of a process killed while saving: temporary files and a half-swapped best/.
            remove_stale_temporaries(last.parent)
            remove_stale_temporaries(run_dir)
            recover_folder(run_dir / "best")
        if last.exists():
            checkpoint = load_checkpoint(last, mmap=True)  # a damaged checkpoint is reported before the data
        else:
            warnings.warn(f"{last}: no checkpoint yet; the run starts again from its first epoch", stacklevel=2)
        saved = load_config(run_dir / "config.yaml")
        # Only the length of the run may change on resume; everything else is the run's own.
        config = saved.updated(
            epochs=config.epochs if config.epochs != saved.epochs else None,
            time_budget=config.time_budget if config.time_budget != saved.time_budget else None,
        )
        if checkpoint is not None:
            _check_resumable(checkpoint, config, last, run_dir / "config.yaml")
        splits_file = run_dir / "splits.json"
    elif _process_rank() == 0 and run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir}: run folder is not empty (use --resume to continue it, or a new --out)")
    else:
        config = config.updated(run_id=uuid.uuid4().hex)  # a new run: its checkpoints carry this id
    data_dir = data_dir if data_dir is not None else config.data_dir
    if data_dir is None:
        raise ValueError("no dataset folder given (--data)")
    config = config.updated(data_dir=str(data_dir))
    L.seed_everything(config.seed, workers=True, verbose=False)

    samples = find_pairs(data_dir)
    if config.max_images is not None:
        samples = samples[: config.max_images]
    if splits_file is not None:
        splits = load_splits(splits_file)
        known = {s.name for s in samples}
        unknown = sorted(name for names in splits.values() for name in names if name not in known)
        if unknown:
            raise ValueError(
                f"{splits_file}: {len(unknown)} names of the split are not in {data_dir}, e.g. {unknown[0]!r}"
            )
    else:
        splits = make_splits([s.name for s in samples], config.split_sizes, config.seed)
    if not splits["train"] or not splits["val"]:
        raise ValueError("the split has no training or no validation images")
    wanted = set(splits["train"]) | set(splits["val"])
    pairs = load_pairs([s for s in samples if s.name in wanted], config.image_size)

    metadata = {
        **({"threshold": config.threshold} if config.task == "binary" else {}),
        "boundary_width_px": config.boundary_width_px,
        "input_size": [config.image_size, config.image_size],
        "training": {
            "config": config.to_dict(),
            "data_dir": str(data_dir),
            "train_images": len(splits["train"]),
            "val_images": len(splits["val"]),
        },
    }
    exporter = BestWeightsExporter(run_dir / "best", config.monitor, metadata)
    callbacks: list[Callback] = [exporter, EpochCSVLogger(run_dir / "metrics.csv"), LastCheckpoint(last)]
    if config.time_budget:
        # Lightning's Timer stops after the batch that used up the budget; that epoch is still validated
        # and checkpointed, and its elapsed time is stored in last.ckpt, so a resumed run counts it.
        callbacks.insert(0, Timer(duration=timedelta(seconds=config.time_budget), interval="step", verbose=False))
    trainer = _trainer(
        config,
        run_dir,
        callbacks,
        max_epochs=-1 if config.time_budget else config.epochs,
        max_steps=max_steps,
        num_sanity_val_steps=0,
        enable_checkpointing=False,  # LastCheckpoint does it
    )
    module = SegmentationModule(config.to_dict())
    if config.init_weights and not (resume and last.exists()):
        _init_from_weights(module, config.init_weights)
    # Only now, with every image and mask decoded and the model built, is anything written: a setup
    # that fails leaves the run folder as it was (a retry does not find it "not empty").
    run_dir.mkdir(parents=True, exist_ok=True)
    if _process_rank() == 0:
        save_config(config, run_dir / "config.yaml")
        save_splits(splits, run_dir / "splits.json")
    trainer.fit(
        module,
        train_dataloaders=_loader(pairs.subset(splits["train"]), config, shuffle=True),
        val_dataloaders=_loader(pairs.subset(splits["val"]), config, shuffle=False),
        ckpt_path=str(last) if resume and last.exists() else None,
    )
    return TrainResult(run_dir, run_dir / "best", exporter.best, trainer.current_epoch, trainer.is_global_zero)


def _check_resumable(checkpoint: dict[str, Any], config: TrainConfig, last: Path, config_path: Path) -> None:
    """Refuse a ``last.ckpt`` of another run, one that ``config.yaml`` no longer fits, or too few epochs."""
    stored = (checkpoint.get("hyper_parameters") or {}).get("config") or {}
    if stored.get("run_id") != config.run_id:
        raise CheckpointError(
            f"{last}: checkpoint of another run (run id {stored.get('run_id')}, {config_path} says {config.run_id}); "
            "restore this run's own last.ckpt or start a new run"
        )
    changed = [
        key
        for key in ("base_channels", "head_kernel_size", "task", "decoder_concat")
        if key in stored and stored[key] != getattr(config, key)
    ]
    if changed:
        key = changed[0]
        raise ValueError(
            f"{config_path}: {key} is {getattr(config, key)} but the run's checkpoint {last} has {stored[key]}; "
            "restore the run's config.yaml"
        )
    completed = int(checkpoint.get("epoch", -1)) + 1
    if not config.time_budget and config.epochs < completed:
        raise ValueError(
            f"{last}: the run has completed {completed} epochs already; --epochs must be at least {completed}"
        )


def _init_from_weights(module: SegmentationModule, weights: str) -> None:
    """Start training from pretrained weights (``config.init_weights``) of the same architecture."""
    from polypseg.weights import WeightsError, load_pretrained

    source = load_pretrained(None if weights == "bundled" else weights)
    keys = ("base_channels", "head_kernel_size", "num_classes", "decoder_concat")
    if [source.config[key] for key in keys] != [module.model.config[key] for key in keys]:
        have = ", ".join(f"{key}={source.config[key]}" for key in keys)
        need = ", ".join(f"{key}={module.model.config[key]}" for key in keys)
        raise WeightsError(f"{weights}: init_weights has {have}; the run needs {need}")
    module.model.load_state_dict(source.state_dict())
    module._channels_last()


@dataclass
class EvaluationResult:
    """Scores of :func:`evaluate`: dataset-level ``metrics`` and one ``rows`` entry per image."""

    metrics: dict[str, float]
    rows: list[dict[str, Any]]


def evaluate(
    model: UNet,
    pairs: CachedPairs,
    batch_size: int = 8,
    boundary_width_px: int = 3,
    precision: str = "32",
    accelerator: str = "auto",
    truth_boxes: dict[str, list[tuple[int, int, int, int]]] | None = None,
    tta: bool = False,
    threshold: float = 0.5,
) -> EvaluationResult:
    """Score ``model`` on cached pairs with the training loop's test step (loss and every metric).

    The loss is averaged over images (each batch's loss weighted by its size); see
    :mod:`polypseg.metrics` for the Dice/IoU conventions.

    Args:
        model: The U-Net.
        pairs: Cached images and masks at the evaluation resolution.
        batch_size: Images per batch (the loss's Dice term is per batch, as in training).
        boundary_width_px: Boundary class width used to build the targets.
        precision: Lightning precision name.
        accelerator: Lightning accelerator.
        truth_boxes: Ground-truth polyp boxes by image name, at the evaluation resolution, for the
            polyp-level detection scores (default: the boxes of the masks' connected regions).
        tta: Flip test-time augmentation (:func:`polypseg.tta.flip_tta`): the loss and every metric,
            the PraNet-protocol probability maps included, use the average of the four flips'
            probabilities. Four times the inference time.
        threshold: Binary models: polyp where the sigmoid probability is at least this.
    """
    config = TrainConfig(
        base_channels=model.base_channels,
        head_kernel_size=model.head_kernel_size,
        num_classes=model.num_classes,
        decoder_concat=model.decoder_concat,
        threshold=threshold,
        batch_size=batch_size,
        boundary_width_px=boundary_width_px,
        precision=precision,
        accelerator=accelerator,
        devices=1,
    )
    module = SegmentationModule(config.to_dict())
    module.model.load_state_dict(model.state_dict())
    module._channels_last()
    module.test_names = list(pairs.names)
    module.test_tta = tta
    if truth_boxes is not None:
        module.test_truth_boxes = {i: truth_boxes.get(name, []) for i, name in enumerate(pairs.names)}
    trainer = _trainer(config, None, [], enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, dataloaders=_loader(pairs, config, shuffle=False), verbose=False)
    scores = {key: float(value) for key, value in module.test_metrics.compute().items()}
    scores["loss"] = module._loss_sum / max(module._loss_images, 1)
    return EvaluationResult(scores, module.test_rows)
