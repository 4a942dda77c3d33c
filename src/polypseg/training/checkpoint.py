"""Lightning checkpoints: written crash-safely, read back without unpickling code.

``RUN_DIR/checkpoints/last.ckpt`` is written to a temporary file beside it, flushed to disk and renamed
(:class:`AtomicCheckpointIO`), and read with ``torch.load(weights_only=True)`` (:func:`load_checkpoint`):
tensors and plain data only. The training configuration is stored in it as a plain dict.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from polypseg.errors import PolypsegError
from polypseg.files import atomic_save

__all__ = ["LAST_CHECKPOINT", "AtomicCheckpointIO", "CheckpointError", "load_checkpoint"]

LAST_CHECKPOINT = "checkpoints/last.ckpt"


class CheckpointError(PolypsegError, ValueError):
    """A Lightning checkpoint that cannot be resumed from; the message names the file."""


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
