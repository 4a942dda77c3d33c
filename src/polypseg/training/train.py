"""``polypseg train``: a configuration and a dataset folder in, a run folder out.

:func:`train` writes::

    RUN_DIR/config.yaml      the resolved configuration
    RUN_DIR/splits.json      the train/val/test split (reusable with --splits)
    RUN_DIR/metrics.csv      one row per epoch: train/val loss, val Dice, lr, time
    RUN_DIR/best/            weights folder of the best epoch (by ``config.monitor``)
    RUN_DIR/checkpoints/last.ckpt   resumable Lightning checkpoint (config inside)

Crash safety: ``last.ckpt`` is saved at the end of every epoch, after the epoch's ``metrics.csv`` row,
``best/`` and learning-rate step (:class:`~polypseg.training.callbacks.LastCheckpoint`), atomically
(:class:`~polypseg.training.checkpoint.AtomicCheckpointIO`). A run killed at any moment therefore resumes
(``resume=True``) at the start of the epoch it was in (from the beginning if it was killed in its first
epoch).
"""

from __future__ import annotations

import logging
import uuid
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Timer
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from polypseg.config import TrainConfig, load_config, save_config
from polypseg.data import CachedPairs, TensorPairDataset, find_pairs, load_pairs, load_splits, make_splits, save_splits
from polypseg.errors import InputError, UsageError
from polypseg.files import recover_folder, remove_stale_temporaries
from polypseg.hardware import resolve_precision
from polypseg.training.callbacks import BestWeightsExporter, EpochCSVLogger, LastCheckpoint
from polypseg.training.checkpoint import LAST_CHECKPOINT, AtomicCheckpointIO, CheckpointError, load_checkpoint
from polypseg.training.module import EpochShuffleSampler, SegmentationModule
from polypseg.weights import WeightsError, load_pretrained

__all__ = ["TrainResult", "train"]


class _IndexedPairs(TensorPairDataset):
    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:  # type: ignore[override]
        image, mask = super().__getitem__(index)
        return image, mask, index


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
        raise UsageError("no dataset folder given (--data)")
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
            raise InputError(
                splits_file, f"{len(unknown)} names of the split are not in {data_dir}, e.g. {unknown[0]!r}"
            )
    else:
        splits = make_splits([s.name for s in samples], config.split_sizes, config.seed)
    if not splits["train"] or not splits["val"]:
        raise UsageError("the split has no training or no validation images")
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
        raise InputError(
            config_path,
            f"{key} is {getattr(config, key)} but the run's checkpoint {last} has {stored[key]}; "
            "restore the run's config.yaml",
        )
    completed = int(checkpoint.get("epoch", -1)) + 1
    if not config.time_budget and config.epochs < completed:
        raise UsageError(
            f"{last}: the run has completed {completed} epochs already; --epochs must be at least {completed}"
        )


def _init_from_weights(module: SegmentationModule, weights: str) -> None:
    """Start training from pretrained weights (``config.init_weights``) of the same architecture."""
    source = load_pretrained(None if weights == "bundled" else weights)
    keys = ("in_channels", "base_channels", "head_kernel_size", "num_classes", "decoder_concat")
    if [source.config[key] for key in keys] != [module.model.config[key] for key in keys]:
        have = ", ".join(f"{key}={source.config[key]}" for key in keys)
        need = ", ".join(f"{key}={module.model.config[key]}" for key in keys)
        raise WeightsError(f"{weights}: init_weights has {have}; the run needs {need}")
    module.model.load_state_dict(source.state_dict())
    module._channels_last()
