"""The class recipe: a binary polyp mask becomes three classes, and back.

The model card trains three output classes without saying what they are. polypseg defines them here,
once:

* ``0`` background: every pixel outside the annotated polyp;
* ``1`` polyp: annotated polyp pixels farther than ``boundary_width_px`` from the polyp's edge;
* ``2`` polyp boundary: annotated polyp pixels within ``boundary_width_px`` (chessboard distance)
  of a background pixel, i.e. the inner rim of each polyp.

Classes 1 and 2 together are exactly the annotated mask, so :func:`classes_to_mask` recovers the
binary polyp mask that the polyp literature scores. The image border is not a polyp edge: a polyp cut
off by the frame has no boundary class along the frame.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "BACKGROUND",
    "BINARY_CLASS_NAMES",
    "BOUNDARY",
    "CLASS_NAMES",
    "DEFAULT_BOUNDARY_WIDTH_PX",
    "DEFAULT_THRESHOLD",
    "MASK_THRESHOLD",
    "NUM_CLASSES",
    "POLYP",
    "TASKS",
    "binarize_mask",
    "class_names_for",
    "classes_to_mask",
    "logits_to_classes",
    "mask_to_classes",
    "polyp_probability",
    "task_of",
]

BACKGROUND, POLYP, BOUNDARY = 0, 1, 2
CLASS_NAMES: tuple[str, ...] = ("background", "polyp", "boundary")
NUM_CLASSES = len(CLASS_NAMES)
DEFAULT_BOUNDARY_WIDTH_PX = 3
#: Kvasir-SEG masks are JPEGs (values 0-8 and 246-255); 128 separates them unambiguously.
MASK_THRESHOLD = 128
#: The binary variant's classes (one output channel).
BINARY_CLASS_NAMES: tuple[str, ...] = ("background", "polyp")
#: Tasks: the card's 3-class model (``multiclass``) and its one-channel sibling (``binary``).
TASKS = ("multiclass", "binary")
#: The binary variant's default decision: polyp where the sigmoid probability is at least this.
DEFAULT_THRESHOLD = 0.5

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def binarize_mask(mask: ArrayOrTensor, threshold: int = MASK_THRESHOLD) -> ArrayOrTensor:
    """Return a boolean polyp mask: ``True`` where ``mask >= threshold`` (element-wise, any shape).

    Boolean input is returned unchanged. A 0/1 integer mask must be converted to bool first: it would
    binarize to all background.
    """
    if mask.dtype in (np.bool_, torch.bool):
        return mask
    return mask >= threshold


def mask_to_classes(mask: ArrayOrTensor, boundary_width_px: int = DEFAULT_BOUNDARY_WIDTH_PX) -> ArrayOrTensor:
    """Turn a binary polyp mask into a class map (0 background, 1 polyp, 2 boundary).

    Args:
        mask: (H, W) or (B, H, W) mask, boolean or 0-255 (binarized at 128), as numpy array or tensor.
        boundary_width_px: Width of the boundary rim in pixels of ``mask``'s resolution; 0 gives no boundary.

    Returns:
        uint8 class map of the same shape and kind (numpy or torch, same device) as ``mask``.

    Example:
        >>> m = np.zeros((9, 9), bool); m[1:8, 1:8] = True
        >>> mask_to_classes(m, boundary_width_px=1)[4]
        array([0, 2, 1, 1, 1, 1, 1, 2, 0], dtype=uint8)
    """
    if boundary_width_px < 0:
        raise ValueError(f"boundary_width_px must be >= 0, got {boundary_width_px}")
    is_numpy = isinstance(mask, np.ndarray)
    polyp = torch.from_numpy(np.ascontiguousarray(binarize_mask(mask))) if is_numpy else binarize_mask(mask)
    if polyp.dim() not in (2, 3):
        raise ValueError(f"mask must be (H, W) or (B, H, W), got shape {tuple(polyp.shape)}")
    classes = polyp.to(torch.uint8) * POLYP
    if boundary_width_px > 0:
        background = (~polyp).float()
        batched = background.unsqueeze(1) if background.dim() == 3 else background[None, None]
        # max_pool pads with -inf, so outside the image never counts as background.
        near_background = F.max_pool2d(
            batched, kernel_size=2 * boundary_width_px + 1, stride=1, padding=boundary_width_px
        ).reshape(polyp.shape)
        classes[polyp & (near_background > 0)] = BOUNDARY
    return classes.numpy() if is_numpy else classes


def classes_to_mask(class_map: ArrayOrTensor) -> ArrayOrTensor:
    """Return the boolean polyp mask of a class map: classes 1 (polyp) and 2 (boundary) together."""
    return class_map > BACKGROUND


def task_of(num_classes: int) -> str:
    """``"binary"`` for a one-channel model, ``"multiclass"`` otherwise."""
    return "binary" if num_classes == 1 else "multiclass"


def class_names_for(num_classes: int) -> tuple[str, ...]:
    """Names of the class map's classes for a model with ``num_classes`` output channels."""
    return BINARY_CLASS_NAMES if num_classes == 1 else CLASS_NAMES


def polyp_probability(logits: torch.Tensor) -> torch.Tensor:
    """Polyp probability (..., H, W), float32, of logits (..., C, H, W).

    One channel: its sigmoid. Several: the softmax over the channels, summed over every class but
    background (polyp + boundary).
    """
    logits = logits.float()
    if logits.shape[-3] == 1:
        return torch.sigmoid(logits[..., 0, :, :])
    return logits.softmax(dim=-3)[..., 1:, :, :].sum(dim=-3)


def logits_to_classes(logits: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """Class map (..., H, W), uint8, of logits (..., C, H, W).

    One channel (binary): class 1 (polyp) where the sigmoid probability is ``>= threshold``, else 0.
    Several channels: the argmax over C (the first maximum wins ties, as ``argmax`` does); ``threshold``
    is not used. For three channels the argmax is computed by element-wise comparisons, which on a CPU is
    much faster than a reduction over the short, strided class dimension for full-resolution maps.

    Example:
        >>> logits_to_classes(torch.tensor([[[-1.0, 0.0, 2.0]]]))
        tensor([[0, 1, 1]], dtype=torch.uint8)
    """
    channels = logits.shape[-3]
    if channels == 1:
        return (torch.sigmoid(logits[..., 0, :, :].float()) >= threshold).to(torch.uint8)
    if channels != 3:
        return logits.argmax(dim=-3).to(torch.uint8)
    background, polyp, boundary = logits.unbind(-3)
    classes = (polyp > background).to(torch.uint8)
    classes[boundary > torch.maximum(background, polyp)] = BOUNDARY
    return classes
