"""Segmentation scores: per-class, 3-class mean and binary-polyp Dice/IoU, per image and dataset-level.

Conventions (also in the README):

* **Dataset-level** ("micro") scores add up true/false positives and false negatives over all pixels of
  all images, then take the ratio. The per-class Dice and IoU, and the 3-class mean Dice (the model card's
  figure: the mean of the background, polyp and boundary Dice), are dataset-level.
* **Per-image** ("mean") scores take the ratio per image, then the mean over images: the polyp
  literature's convention for the binary polyp Dice/IoU/precision/recall.
* **Empty masks.** A ratio whose numerator and denominator are both 0 (e.g. Dice of an image with no
  polyp in the truth and none predicted) counts as 1 when the prediction equals the truth (both empty)
  and 0 otherwise. Predicting nothing on an image that has a polyp gives Dice, IoU, recall and precision 0.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import multiclass_stat_scores

from polypseg.classes import CLASS_NAMES, classes_to_mask

__all__ = ["SegmentationMetrics", "binary_image_scores", "class_counts", "ratio"]


def ratio(numerator: torch.Tensor, denominator: torch.Tensor, perfect: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``; where the denominator is 0, 1 if ``perfect`` else 0."""
    numerator, denominator = numerator.double(), denominator.double()
    safe = torch.where(denominator > 0, numerator / denominator.clamp_min(1e-12), perfect.double())
    return safe


def class_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """True positives, false positives and false negatives per class: (num_classes, 3) int64."""
    stats = multiclass_stat_scores(
        pred.reshape(-1), target.reshape(-1), num_classes=num_classes, average=None
    )  # (C, 5): tp, fp, tn, fn, support
    return torch.stack([stats[:, 0], stats[:, 1], stats[:, 3]], dim=1).long()


def binary_image_scores(pred_mask: torch.Tensor, true_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image binary polyp scores of boolean masks (B, H, W): dice, iou, precision, recall, tp, fp, fn."""
    pred, true = pred_mask.flatten(1).bool(), true_mask.flatten(1).bool()
    tp = (pred & true).sum(1)
    fp = (pred & ~true).sum(1)
    fn = (~pred & true).sum(1)
    perfect = (fp == 0) & (fn == 0)
    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn, perfect),
        "iou": ratio(tp, tp + fp + fn, perfect),
        "precision": ratio(tp, tp + fp, perfect),
        "recall": ratio(tp, tp + fn, perfect),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


class SegmentationMetrics(Metric):
    """Accumulate class maps and report every score of the project (see the module docstring).

    ``update(pred, target)`` takes class maps (B, H, W) or logits (B, C, H, W) for ``pred``.
    ``compute()`` returns a flat dict: ``dice_<class>``, ``iou_<class>``, ``mean_dice`` (3-class, the
    card's figure), ``mean_iou``, ``polyp_dice`` / ``polyp_iou`` / ``polyp_precision`` / ``polyp_recall``
    (mean over images) and the same with a ``_dataset`` suffix (pooled over pixels), and ``images``.

    Example:
        >>> metric = SegmentationMetrics()
        >>> target = torch.zeros(1, 4, 4, dtype=torch.long); target[0, 1:3, 1:3] = 1
        >>> metric.update(target, target)
        >>> float(metric.compute()["polyp_dice"])
        1.0
    """

    full_state_update = False

    def __init__(self, class_names: tuple[str, ...] = CLASS_NAMES, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.class_names = tuple(class_names)
        num_classes = len(self.class_names)
        self.add_state("counts", default=torch.zeros(num_classes, 3, dtype=torch.long), dist_reduce_fx="sum")
        for name in ("dice", "iou", "precision", "recall"):
            self.add_state(f"image_{name}", default=[], dist_reduce_fx="cat")
        self.add_state("binary_counts", default=torch.zeros(3, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        """Add a batch: ``pred`` class maps (B, H, W) or logits (B, C, H, W); ``target`` (B, H, W)."""
        if pred.dim() == 4:
            pred = pred.argmax(dim=1)
        self.counts += class_counts(pred, target, len(self.class_names))
        scores = binary_image_scores(classes_to_mask(pred), classes_to_mask(target))
        for name in ("dice", "iou", "precision", "recall"):
            getattr(self, f"image_{name}").append(scores[name])
        self.binary_counts += torch.stack([scores["tp"].sum(), scores["fp"].sum(), scores["fn"].sum()])

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Return the scores of everything seen since the last reset."""
        tp, fp, fn = self.counts.unbind(1)
        perfect = (fp == 0) & (fn == 0)
        dice, iou = ratio(2 * tp, 2 * tp + fp + fn, perfect), ratio(tp, tp + fp + fn, perfect)
        result: dict[str, torch.Tensor] = {}
        for index, name in enumerate(self.class_names):
            result[f"dice_{name}"] = dice[index]
            result[f"iou_{name}"] = iou[index]
        result["mean_dice"] = dice.mean()
        result["mean_iou"] = iou.mean()
        for name in ("dice", "iou", "precision", "recall"):
            values = getattr(self, f"image_{name}")
            values = torch.cat(values) if isinstance(values, list) and values else values
            result[f"polyp_{name}"] = (
                values.mean() if isinstance(values, torch.Tensor) and values.numel() else torch.tensor(float("nan"))
            )
        btp, bfp, bfn = self.binary_counts
        bperfect = (bfp == 0) & (bfn == 0)
        result["polyp_dice_dataset"] = ratio(2 * btp, 2 * btp + bfp + bfn, bperfect)
        result["polyp_iou_dataset"] = ratio(btp, btp + bfp + bfn, bperfect)
        result["polyp_precision_dataset"] = ratio(btp, btp + bfp, bperfect)
        result["polyp_recall_dataset"] = ratio(btp, btp + bfn, bperfect)
        images = self.image_dice
        result["images"] = torch.tensor(sum(v.numel() for v in images) if isinstance(images, list) else images.numel())
        return {key: value.float() for key, value in result.items()}
