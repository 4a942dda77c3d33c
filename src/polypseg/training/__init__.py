"""Training: the LightningModule, its callbacks, crash-safe checkpoints, and :func:`train` (``polypseg train``).

* :mod:`~polypseg.training.module`: :class:`SegmentationModule` (the one training and validation loop).
* :mod:`~polypseg.training.callbacks`: ``best/``, ``metrics.csv`` and ``last.ckpt`` at the end of epochs.
* :mod:`~polypseg.training.checkpoint`: atomic ``last.ckpt`` writes, ``weights_only`` reads.
* :mod:`~polypseg.training.train`: :func:`train`, resume checks.

Scoring a model is :func:`polypseg.evaluation.evaluate` (through the Predictor), not this package.
"""

from polypseg.training.callbacks import BestWeightsExporter, EpochCSVLogger, LastCheckpoint
from polypseg.training.checkpoint import LAST_CHECKPOINT, AtomicCheckpointIO, CheckpointError, load_checkpoint
from polypseg.training.module import EpochShuffleSampler, SegmentationModule, one_cycle_factor
from polypseg.training.train import TrainResult, train

__all__ = [
    "LAST_CHECKPOINT",
    "AtomicCheckpointIO",
    "BestWeightsExporter",
    "CheckpointError",
    "EpochCSVLogger",
    "EpochShuffleSampler",
    "LastCheckpoint",
    "SegmentationModule",
    "TrainResult",
    "load_checkpoint",
    "one_cycle_factor",
    "train",
]
