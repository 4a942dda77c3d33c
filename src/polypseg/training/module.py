"""The LightningModule of training and validation: U-Net, the card's loss, metrics, schedules, EMA, sampler.

Batch order and augmentation depend only on the seed and the epoch number (:class:`EpochShuffleSampler`,
:meth:`SegmentationModule.on_train_epoch_start`), so a resumed run repeats exactly what the uninterrupted
run would have done (bit for bit with ``deterministic: true``).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Timer
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import RandomSampler

from polypseg.classes import class_names_for, logits_to_classes, mask_to_classes
from polypseg.config import TrainConfig
from polypseg.data import build_augmentation
from polypseg.losses import CombinedLoss, soft_dice
from polypseg.metrics import SegmentationMetrics
from polypseg.model import UNet

__all__ = ["EpochShuffleSampler", "SegmentationModule", "one_cycle_factor"]


def _derived_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (stable across Python versions and processes)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1, dtype=np.uint64)[0] >> 1)


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
    """U-Net + the card's loss + the project's metrics, for training and validation.

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
        self._plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict[str, Any] | None = None
        self._channels_last()
        # A compiled forward (not a registered submodule: the state dict keeps the plain model's names).
        object.__setattr__(self, "_compiled", torch.compile(self.model) if self.config.compile else None)

    def _channels_last(self) -> None:
        if self.config.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, 3, H, W) of images (B, 3, H, W) in [0, 1]."""
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
