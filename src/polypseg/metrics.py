"""Segmentation scores: per-class, 3-class mean and binary-polyp Dice/IoU, per image and dataset-level.

Conventions (also in the README):

* **Dataset-level** ("micro") scores add up true/false positives and false negatives over all pixels of
  all images, then take the ratio. The per-class Dice and IoU, and the 3-class mean Dice (the model card's
  figure: the mean of the background, polyp and boundary Dice), are dataset-level.
* **Per-image** ("mean") scores take the ratio per image, then the mean over images: the polyp
  literature's convention for the binary polyp Dice/IoU/precision/recall.
* **Literature "mean Dice"** (PraNet protocol): the polyp probability map (softmax of polyp + boundary;
  for the binary variant, one output channel, its sigmoid: :func:`polypseg.classes.polyp_probability`)
  of each image is min-max normalised and quantised to 256 levels, binarized at the 256 thresholds
  0, 1/255, ..., 1 (``p >= t``), the Dice of each threshold is averaged over images, then over thresholds
  (``polyp_mean_dice_pranet``; the best threshold's mean is ``polyp_max_dice_pranet``).
* **Literature table** (``SegmentationMetrics(literature=True)``, what ``polypseg evaluate`` reports): the
  measures of the PraNet / Polyp-PVT tables, computed by `pysodmetrics` (``py_sod_metrics``, the Python
  port of the MATLAB toolbox those papers use) on the same probability map, min-max normalised and
  saved as 8 bits as PraNet's test script does: ``lit_mean_dice`` and ``lit_mean_iou`` (per image, mean
  over the 256 thresholds, then over images), ``lit_wfm`` (weighted F-measure, beta 1), ``lit_sm``
  (S-measure, alpha 0.5), ``lit_mean_em`` / ``lit_max_em`` (E-measure curve averaged over images, then
  its mean / maximum over thresholds) and ``lit_mae``. The toolbox's conventions apply: an image whose
  truth is empty scores 0 Dice/IoU/wFm at every threshold. Maps and masks are at the evaluation
  resolution (see :mod:`polypseg.evaluation`), not resized back to each mask's own size as PraNet does.
* **Polyp-level detection**: each connected predicted region (8-connectivity, at least
  ``min_region_fraction`` of the image) is a detection; its box is matched one-to-one, greedily by IoU,
  to the ground-truth boxes at box IoU >= 0.5. Recall = matched / ground-truth polyps, precision =
  matched / detections; ``polyps_missed`` counts unmatched ground-truth polyps.
* **Empty masks.** A ratio whose numerator and denominator are both 0 (e.g. Dice of an image with no
  polyp in the truth and none predicted) counts as 1 when the prediction equals the truth (both empty)
  and 0 otherwise. Predicting nothing on an image that has a polyp gives Dice, IoU, recall and precision 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torchmetrics import Metric
from torchmetrics.functional.classification import multiclass_stat_scores

from polypseg.classes import CLASS_NAMES, DEFAULT_THRESHOLD, classes_to_mask, logits_to_classes, polyp_probability

__all__ = [
    "LITERATURE_COLUMNS",
    "PolypRegion",
    "SegmentationMetrics",
    "binary_image_scores",
    "box_iou",
    "class_counts",
    "find_polyps",
    "literature_image_scores",
    "match_boxes",
    "ratio",
    "threshold_dice_curves",
]

THRESHOLDS = 256
#: Columns of the published polyp tables, in their order: (header, key of :class:`SegmentationMetrics`).
LITERATURE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("mDice", "lit_mean_dice"),
    ("mIoU", "lit_mean_iou"),
    ("wFm", "lit_wfm"),
    ("Sm", "lit_sm"),
    ("meanEm", "lit_mean_em"),
    ("maxEm", "lit_max_em"),
    ("MAE", "lit_mae"),
)
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class PolypRegion:
    """One connected polyp region: pixel count and box ``(x_min, y_min, x_max, y_max)``, max exclusive."""

    pixels: int
    box: Box


def find_polyps(mask: np.ndarray, min_pixels: int = 0) -> list[PolypRegion]:
    """Connected regions (8-connectivity) of a boolean mask with at least ``min_pixels`` pixels, largest first."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    regions = []
    for label, slices in enumerate(ndimage.find_objects(labels), start=1):
        if slices is None or sizes[label] < max(min_pixels, 1):
            continue
        rows, cols = slices
        regions.append(PolypRegion(int(sizes[label]), (cols.start, rows.start, cols.stop, rows.stop)))
    return sorted(regions, key=lambda region: -region.pixels)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes ``(x_min, y_min, x_max, y_max)`` (max exclusive)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    intersection = max(width, 0) * max(height, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return intersection / union if union > 0 else 0.0


def match_boxes(predicted: Sequence[Sequence[float]], truth: Sequence[Sequence[float]], threshold: float = 0.5) -> int:
    """Number of one-to-one matches at IoU >= ``threshold``, taking the highest-IoU pairs first."""
    pairs = sorted(((box_iou(p, t), i, j) for i, p in enumerate(predicted) for j, t in enumerate(truth)), reverse=True)
    used_predicted: set[int] = set()
    used_truth: set[int] = set()
    for iou, i, j in pairs:
        if iou < threshold:
            break
        if i not in used_predicted and j not in used_truth:
            used_predicted.add(i)
            used_truth.add(j)
    return len(used_truth)


def threshold_dice_curves(probability: torch.Tensor, true_mask: torch.Tensor) -> torch.Tensor:
    """Per-image Dice at 256 thresholds of min-max normalised, 8-bit quantised probability maps.

    Args:
        probability: (B, H, W) polyp probability.
        true_mask: (B, H, W) boolean truth.

    Returns:
        (B, 256) float64: Dice of ``p >= k / 255`` for k = 0..255 (empty-mask convention as above).
    """
    flat = probability.detach().float().flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    levels = ((flat - low) / (high - low + 1e-8) * 255).round().long().clamp(0, 255)
    truth = true_mask.flatten(1).bool()
    curves = []
    for image_levels, image_truth in zip(levels, truth, strict=True):
        positive = torch.bincount(image_levels[image_truth], minlength=THRESHOLDS)
        negative = torch.bincount(image_levels[~image_truth], minlength=THRESHOLDS)
        tp = positive.flip(0).cumsum(0).flip(0)  # pixels with level >= k
        fp = negative.flip(0).cumsum(0).flip(0)
        fn = positive.sum() - tp
        curves.append(ratio(2 * tp, 2 * tp + fp + fn, (fp == 0) & (fn == 0)))
    return torch.stack(curves)


def to_8bit_map(probability: np.ndarray) -> np.ndarray:
    """A probability map as PraNet's test script saves it: min-max normalised, then 8 bits (uint8).

    ``(p - min) / (max - min + 1e-8)``, rounded to 0..255: a constant map becomes all 0.
    """
    probability = np.asarray(probability, dtype=np.float64)
    low, high = probability.min(), probability.max()
    return np.round((probability - low) / (high - low + 1e-8) * 255).clip(0, 255).astype(np.uint8)


def literature_image_scores(probability: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """The literature measures of one image, by `pysodmetrics` (``py_sod_metrics``).

    Args:
        probability: (H, W) polyp probability (any range: it is min-max normalised, see :func:`to_8bit_map`).
        truth: (H, W) boolean polyp mask.

    Returns:
        ``dice``, ``iou``, ``em``: (256,) float64 curves over the thresholds (pysodmetrics' order, from
        ``>= 255`` down to ``>= 0``); ``wfm``, ``sm``, ``mae``: floats.
    """
    from py_sod_metrics import MAE, DICEHandler, Emeasure, FmeasureV2, IOUHandler, Smeasure, WeightedFmeasure

    pred = to_8bit_map(probability)
    gt = np.where(np.asarray(truth, dtype=bool), 255, 0).astype(np.uint8)
    thresholded = FmeasureV2(
        metric_handlers={
            "dice": DICEHandler(with_dynamic=True, with_adaptive=False),
            "iou": IOUHandler(with_dynamic=True, with_adaptive=False),
        }
    )
    sm, em, wfm, mae = Smeasure(), Emeasure(), WeightedFmeasure(), MAE()
    for measure in (thresholded, sm, em, wfm, mae):
        measure.step(pred=pred, gt=gt)
    curves = thresholded.get_results()
    return {
        "dice": np.asarray(curves["dice"]["dynamic"], dtype=np.float64),
        "iou": np.asarray(curves["iou"]["dynamic"], dtype=np.float64),
        "em": np.asarray(em.get_results()["em"]["curve"], dtype=np.float64),
        "wfm": float(wfm.get_results()["wfm"]),
        "sm": float(sm.get_results()["sm"]),
        "mae": float(mae.get_results()["mae"]),
    }


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
    With ``literature=True`` and logits, also the ``lit_*`` measures of the published polyp tables
    (:data:`LITERATURE_COLUMNS`; tens of milliseconds per 256x256 image on a CPU, so off for validation).
    Logits of the binary variant (one channel) go with ``class_names=BINARY_CLASS_NAMES``: the class map is
    polyp where the sigmoid is at least ``threshold`` (:func:`polypseg.classes.logits_to_classes`).

    Example:
        >>> metric = SegmentationMetrics()
        >>> target = torch.zeros(1, 4, 4, dtype=torch.long); target[0, 1:3, 1:3] = 1
        >>> metric.update(target, target)
        >>> float(metric.compute()["polyp_dice"])
        1.0
    """

    full_state_update = False

    def __init__(
        self,
        class_names: tuple[str, ...] = CLASS_NAMES,
        literature: bool = False,
        threshold: float = DEFAULT_THRESHOLD,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.class_names = tuple(class_names)
        self.literature = literature
        self.threshold = threshold
        # Literature measures: summed (dice, iou, E-measure) curves, per-image (wfm, sm, mae), image count.
        self.add_state("lit_curves", default=torch.zeros(3, THRESHOLDS, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("lit_values", default=[], dist_reduce_fx="cat")
        self.add_state("lit_images", default=torch.tensor(0), dist_reduce_fx="sum")
        num_classes = len(self.class_names)
        self.add_state("counts", default=torch.zeros(num_classes, 3, dtype=torch.long), dist_reduce_fx="sum")
        for name in ("dice", "iou", "precision", "recall"):
            self.add_state(f"image_{name}", default=[], dist_reduce_fx="cat")
        self.add_state("binary_counts", default=torch.zeros(3, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("curve_sum", default=torch.zeros(THRESHOLDS, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("curve_images", default=torch.tensor(0), dist_reduce_fx="sum")
        # ground-truth polyps, detections, matches (box IoU >= 0.5)
        self.add_state("detection_counts", default=torch.zeros(3, dtype=torch.long), dist_reduce_fx="sum")

    def update(  # type: ignore[override]
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        truth_boxes: Sequence[Sequence[Box]] | None = None,
        min_region_fraction: float = 0.001,
    ) -> None:
        """Add a batch.

        Args:
            pred: Logits (B, C, H, W) or class maps (B, H, W); logits also give the PraNet-protocol scores.
            target: Class maps (B, H, W).
            truth_boxes: Ground-truth polyp boxes per image at this resolution (default: the boxes of the
                target mask's connected regions).
            min_region_fraction: Smallest predicted region counted as a detection, as a share of the image.
        """
        pranet, literature = None, {}
        if pred.dim() == 4:
            probability = polyp_probability(pred)
            curves = threshold_dice_curves(probability, classes_to_mask(target))
            self.curve_sum += curves.sum(0).to(self.curve_sum.device)
            self.curve_images += pred.shape[0]
            pranet = curves.mean(1)
            if self.literature:
                literature = self._update_literature(probability, classes_to_mask(target))
            pred = logits_to_classes(pred, self.threshold).long()
        self.counts += class_counts(pred, target, len(self.class_names))
        scores = binary_image_scores(classes_to_mask(pred), classes_to_mask(target))
        for name in ("dice", "iou", "precision", "recall"):
            getattr(self, f"image_{name}").append(scores[name])
        self.binary_counts += torch.stack([scores["tp"].sum(), scores["fp"].sum(), scores["fn"].sum()])
        min_pixels = int(np.ceil(min_region_fraction * pred.shape[-1] * pred.shape[-2]))
        detection = []
        for index, (image_pred, image_target) in enumerate(zip(pred, target, strict=True)):
            detections = [r.box for r in find_polyps(classes_to_mask(image_pred).cpu().numpy(), min_pixels)]
            if truth_boxes is not None:
                truth = list(truth_boxes[index])
            else:
                truth = [r.box for r in find_polyps(classes_to_mask(image_target).cpu().numpy())]
            detection.append([len(truth), len(detections), match_boxes(detections, truth)])
        detection_tensor = torch.tensor(detection, dtype=torch.long).reshape(-1, 3)
        self.detection_counts += detection_tensor.sum(0).to(self.detection_counts.device)
        #: Per-image scores of the last batch (for per-image reports).
        self.last_image_scores = {
            **{key: scores[key] for key in ("dice", "iou", "precision", "recall")},
            "polyps_true": detection_tensor[:, 0],
            "polyps_detected": detection_tensor[:, 1],
            "polyps_matched": detection_tensor[:, 2],
            **({"mean_dice_pranet": pranet} if pranet is not None else {}),
            **literature,
        }

    def _update_literature(self, probability: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
        """Add the literature measures of a batch; returns their per-image values (``lit_*``, (B,) each)."""
        scores = [
            literature_image_scores(p, t)
            for p, t in zip(probability.detach().float().cpu().numpy(), truth.cpu().numpy(), strict=True)
        ]
        curves = torch.tensor(np.array([[s["dice"], s["iou"], s["em"]] for s in scores]), dtype=torch.float64)
        values = torch.tensor([[s["wfm"], s["sm"], s["mae"]] for s in scores], dtype=torch.float64)
        self.lit_curves += curves.sum(0).to(self.lit_curves.device)
        self.lit_values.append(values.to(self.lit_curves.device))
        self.lit_images += len(scores)
        return {
            "lit_mean_dice": curves[:, 0].mean(1),
            "lit_mean_iou": curves[:, 1].mean(1),
            "lit_wfm": values[:, 0],
            "lit_sm": values[:, 1],
            "lit_mean_em": curves[:, 2].mean(1),
            "lit_mae": values[:, 2],
        }

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
        if int(self.curve_images) > 0:
            curve = self.curve_sum / self.curve_images
            result["polyp_mean_dice_pranet"] = curve.mean()
            result["polyp_max_dice_pranet"] = curve.max()
        if int(self.lit_images) > 0:
            lit_curves = self.lit_curves / self.lit_images
            values = self.lit_values
            values = torch.cat(values) if isinstance(values, list) else values
            wfm, sm, mae = values.mean(0)
            result["lit_mean_dice"], result["lit_mean_iou"] = lit_curves[0].mean(), lit_curves[1].mean()
            result["lit_wfm"], result["lit_sm"] = wfm, sm
            result["lit_mean_em"], result["lit_max_em"] = lit_curves[2].mean(), lit_curves[2].max()
            result["lit_mae"] = mae
        truth_count, detections, matched = self.detection_counts
        result["detection_recall"] = ratio(matched, truth_count, detections == 0)
        result["detection_precision"] = ratio(matched, detections, truth_count == 0)
        result["polyps_true"] = truth_count
        result["polyps_detected"] = matched
        result["polyps_missed"] = truth_count - matched
        result["false_detections"] = detections - matched
        images = self.image_dice
        result["images"] = torch.tensor(sum(v.numel() for v in images) if isinstance(images, list) else images.numel())
        return {key: value.float() for key, value in result.items()}
