"""Flip test-time augmentation: average the network's predictions over horizontal and vertical flips.

:func:`flip_tta` runs any ``images -> logits`` callable (the PyTorch model, a Lightning module, an ONNX
Runtime or OpenVINO backend) on a batch and on its three flipped copies, flips each output back, and
averages the four softmax probability maps. It returns the log of that mean, so that ``argmax`` and
``softmax`` of the result are the augmented prediction and cross-entropy on it is the loss of the
averaged probabilities. For the binary variant (one output channel) it averages the four sigmoid
probabilities and returns the logit of the mean, so that ``sigmoid`` of the result is the averaged
probability. It costs four network calls per batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FLIPS", "flip_tta"]

#: The flips averaged, as spatial dimensions of a (B, C, H, W) batch: none, horizontal, vertical, both.
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _flip(images: ArrayT, dims: tuple[int, ...]) -> ArrayT:
    """``images`` flipped along ``dims`` (a contiguous copy for numpy, so every backend accepts it)."""
    if not dims:
        return images
    if isinstance(images, np.ndarray):
        return np.ascontiguousarray(np.flip(images, axis=dims))
    return torch.flip(images, dims=dims)


def flip_tta(logits_fn: Callable[[ArrayT], ArrayT], images: ArrayT) -> ArrayT:
    """Predict with flip test-time augmentation.

    The network runs on ``images`` and on their horizontal, vertical and horizontal+vertical flips (one
    call each, so memory stays that of one batch); each output is flipped back, and the four softmax
    probability maps are averaged per pixel. The result is the log of that mean, computed stably as
    ``logsumexp(log_softmax) - log 4``.

    Args:
        logits_fn: Maps a batch (B, 3, H, W) to logits (B, C, H, W): a torch module or any
            :class:`~polypseg.deploy.backends.Backend` (numpy in, numpy out).
        images: The batch, a torch tensor or a numpy array (whatever ``logits_fn`` takes).

    Returns:
        Float32, of the same type (numpy or torch) and device as ``images``. For one output channel (the
        binary variant), the logit of the mean sigmoid probability (``log(p) - log(1 - p)``, computed
        stably). Otherwise log-probabilities (B, C, H, W): ``argmax`` over C is the augmented class map,
        ``softmax`` gives back the averaged probabilities, and ``F.cross_entropy`` on it is the loss of the
        averaged prediction.

    Example:
        >>> from polypseg.model import UNet
        >>> model = UNet(base_channels=4).eval()
        >>> with torch.no_grad():
        ...     log_probs = flip_tta(model, torch.rand(2, 3, 32, 32))
        >>> log_probs.shape, bool(torch.allclose(log_probs.exp().sum(1), torch.ones(2, 32, 32)))
        (torch.Size([2, 3, 32, 32]), True)
    """
    is_numpy = isinstance(images, np.ndarray)
    outputs = []
    for dims in FLIPS:
        logits = logits_fn(_flip(images, dims))
        tensor = torch.from_numpy(np.asarray(logits)) if is_numpy else logits
        outputs.append(_flip(tensor.float(), dims))
    stacked = torch.stack(outputs)
    if stacked.shape[2] == 1:  # binary: log of the mean of p and of 1 - p, then their difference
        log_p = torch.logsumexp(F.logsigmoid(stacked), dim=0)
        log_not_p = torch.logsumexp(F.logsigmoid(-stacked), dim=0)
        result = log_p - log_not_p
    else:
        result = torch.logsumexp(stacked.log_softmax(dim=2), dim=0) - math.log(len(FLIPS))
    return result.numpy() if is_numpy else result  # type: ignore[return-value]
