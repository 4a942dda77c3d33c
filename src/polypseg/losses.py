"""The seed's loss: 0.5 x cross-entropy + 0.5 x multi-class soft Dice loss, and its binary sibling.

The card's 3-class loss "replaces BCE for the multi-class case": the binary variant (one output
channel) is trained with 0.5 x binary cross-entropy with logits + 0.5 x soft Dice loss on the sigmoid
probabilities (:func:`binary_combined_loss`). Pure functions do the work; :class:`CombinedLoss` is a
thin module over them that picks the binary loss for one-channel logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CombinedLoss",
    "binary_combined_loss",
    "binary_soft_dice",
    "combined_loss",
    "soft_dice",
    "soft_dice_loss",
    "soft_dice_per_class",
]


def soft_dice_per_class(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice of softmax probabilities against one-hot targets, one value per class.

    Sums run over the whole batch and all pixels (the batch is one volume per class). ``smooth`` is
    added to numerator and denominator, so a class absent from both target and prediction scores 1,
    and a class absent from the target but predicted scores close to 0.

    Args:
        logits: (B, C, H, W) raw scores.
        target: (B, H, W) integer class indices in [0, C).
        smooth: Additive smoothing term.

    Returns:
        (C,) tensor of Dice scores.
    """
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1)
    one_hot = F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    cardinality = probs.sum(dims) + one_hot.sum(dims)
    return (2.0 * intersection + smooth) / (cardinality + smooth)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - mean over classes`` of :func:`soft_dice_per_class`."""
    return 1.0 - soft_dice_per_class(logits, target, smooth).mean()


def combined_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ce_weight: float = 0.5,
    dice_weight: float = 0.5,
    smooth: float = 1.0,
) -> torch.Tensor:
    """``ce_weight x cross-entropy + dice_weight x soft Dice loss`` (the card's CombinedLoss).

    Example:
        >>> logits = torch.zeros(1, 3, 4, 4)
        >>> target = torch.zeros(1, 4, 4, dtype=torch.long)
        >>> round(float(F.cross_entropy(logits, target)), 4)  # ln 3
        1.0986
    """
    cross_entropy = F.cross_entropy(logits.float(), target.long())
    return ce_weight * cross_entropy + dice_weight * soft_dice_loss(logits, target, smooth)


def binary_soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice of the sigmoid probabilities of one-channel logits against a binary polyp target.

    Sums run over the whole batch and all pixels, with ``smooth`` added to numerator and denominator,
    as in :func:`soft_dice_per_class`.

    Args:
        logits: (B, 1, H, W) raw scores.
        target: (B, H, W) polyp mask: boolean, or class indices where every class but 0 is polyp.
        smooth: Additive smoothing term.

    Returns:
        Scalar tensor.

    Example:
        >>> target = torch.ones(1, 2, 2, dtype=torch.long)
        >>> round(float(binary_soft_dice(torch.full((1, 1, 2, 2), 20.0), target)), 4)
        1.0
    """
    probs = torch.sigmoid(logits.float()[:, 0])
    truth = (target > 0).to(probs.dtype)
    intersection = (probs * truth).sum()
    return (2.0 * intersection + smooth) / (probs.sum() + truth.sum() + smooth)


def binary_combined_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    bce_weight: float = 0.5,
    dice_weight: float = 0.5,
    smooth: float = 1.0,
) -> torch.Tensor:
    """``bce_weight x BCE with logits + dice_weight x (1 - soft Dice)`` for one-channel logits (the binary variant).

    Args:
        logits: (B, 1, H, W) raw scores.
        target: (B, H, W) polyp mask: boolean, or class indices where every class but 0 is polyp.
        bce_weight: Weight of the binary cross-entropy term.
        dice_weight: Weight of the soft Dice loss term.
        smooth: Dice smoothing term (see :func:`binary_soft_dice`).

    Example:
        >>> logits = torch.zeros(1, 1, 4, 4)
        >>> target = torch.zeros(1, 4, 4, dtype=torch.long)
        >>> round(float(F.binary_cross_entropy_with_logits(logits[:, 0], target.float())), 4)  # ln 2
        0.6931
    """
    truth = (target > 0).float()
    bce = F.binary_cross_entropy_with_logits(logits.float()[:, 0], truth)
    return bce_weight * bce + dice_weight * (1.0 - binary_soft_dice(logits, target, smooth))


def soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The soft Dice that training reports: binary for one-channel logits, else the mean over classes."""
    if logits.shape[1] == 1:
        return binary_soft_dice(logits, target)
    return soft_dice_per_class(logits, target).mean()


class CombinedLoss(nn.Module):
    """Module wrapper of :func:`combined_loss`, and of :func:`binary_combined_loss` for one-channel logits.

    Args:
        ce_weight: Weight of the cross-entropy term (binary cross-entropy for one-channel logits).
        dice_weight: Weight of the soft Dice loss term.
        smooth: Dice smoothing term (see :func:`soft_dice_per_class`).
    """

    def __init__(self, ce_weight: float = 0.5, dice_weight: float = 0.5, smooth: float = 1.0) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the scalar loss for logits (B, C, H, W) and class targets (B, H, W)."""
        if logits.shape[1] == 1:
            return binary_combined_loss(logits, target, self.ce_weight, self.dice_weight, self.smooth)
        return combined_loss(logits, target, self.ce_weight, self.dice_weight, self.smooth)
