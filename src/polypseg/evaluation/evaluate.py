"""``polypseg evaluate``: score weights on a split through the Predictor and write the reports.

Writes ``metrics.json`` (every dataset-level score, the split, the weights) and ``per_image.csv`` (one row
per image). Scores are computed at the training resolution (images and masks resized as in training)
with :meth:`polypseg.inference.Predictor.network`, the network path every other command uses; see
:mod:`polypseg.metrics` for the conventions, including how images with empty masks count.

The polyp literature's measures (``lit_*``: mDice, mIoU, wFm, Sm, meanEm, maxEm, MAE, as in the PraNet
and Polyp-PVT tables) are computed by `pysodmetrics` on the polyp probability map (softmax of polyp +
boundary; for the binary variant, one output channel, its sigmoid) at that same resolution, against the
mask resized the same way (binarized at 128, nearest neighbour, to the square input size). PraNet's
protocol instead upsamples each prediction to its mask's own size; the two differ slightly, mostly on
thin borders. :func:`run_evaluations` scores several
dataset folders in one run and writes the table of these measures with one row per dataset.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from polypseg.classes import DEFAULT_THRESHOLD, class_names_for, classes_to_mask, mask_to_classes, task_of
from polypseg.data import CachedPairs, find_pairs, load_pairs
from polypseg.errors import UsageError
from polypseg.evaluation.splits import dataset_names, is_training_dataset, read_truth_boxes, resolve_split
from polypseg.evaluation.tables import LITERATURE_CSV, literature_csv
from polypseg.files import atomic_write_csv, atomic_write_text, refuse_existing
from polypseg.inference import Predictor, decision_threshold
from polypseg.losses import CombinedLoss
from polypseg.metrics import SegmentationMetrics, class_counts, ratio
from polypseg.model import UNet
from polypseg.weights import Weights, WeightsLike, load_pretrained, resolve

__all__ = [
    "EVALUATION_FILES",
    "EvaluationOptions",
    "EvaluationReport",
    "EvaluationResult",
    "evaluate",
    "evaluation_predictor",
    "run_evaluation",
    "run_evaluations",
]


@dataclass
class EvaluationResult:
    """Scores of :func:`evaluate`: dataset-level ``metrics`` and one ``rows`` entry per image."""

    metrics: dict[str, float]
    rows: list[dict[str, Any]]


def evaluate(
    model: UNet | Predictor,
    pairs: CachedPairs,
    batch_size: int = 8,
    boundary_width_px: int = 3,
    precision: str = "32",
    accelerator: str = "auto",
    truth_boxes: dict[str, list[tuple[int, int, int, int]]] | None = None,
    tta: bool = False,
    threshold: float | None = None,
) -> EvaluationResult:
    """Score a model on cached pairs through the Predictor (loss and every metric).

    The loss is averaged over images (each batch's loss weighted by its size); see
    :mod:`polypseg.metrics` for the Dice/IoU conventions.

    Args:
        model: A :class:`~polypseg.inference.Predictor` (any backend), or a U-Net run by one in ``precision``.
        pairs: Cached images and masks at the evaluation resolution.
        batch_size: Images per batch (the loss's Dice term is per batch, as in training).
        boundary_width_px: Boundary class width used to build the targets.
        precision: For a U-Net: ``"32"`` or ``"bf16-mixed"`` (``"bf16"``).
        accelerator: For a U-Net: ``"cpu"``, or ``"auto"``/``"gpu"`` (CUDA where there is one).
        truth_boxes: Ground-truth polyp boxes by image name, at the evaluation resolution, for the
            polyp-level detection scores (default: the boxes of the masks' connected regions).
        tta: Flip test-time augmentation (:func:`polypseg.tta.flip_tta`): the loss and every metric,
            the PraNet-protocol probability maps included, use the average of the four flips'
            probabilities. Four times the inference time.
        threshold: Binary models (one output channel): polyp where the sigmoid probability is at least
            this (default: the Predictor's, 0.5 for a U-Net). The binary model's classes are background
            and polyp: its targets have no boundary class.
    """
    if isinstance(model, Predictor):
        predictor = model
    else:
        device = "cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"
        predictor = Predictor(model, int(pairs.images.shape[-1]), device=device, precision=_PRECISIONS[precision])
    if (tta and not predictor.tta) or (threshold is not None and threshold != predictor.threshold):
        chosen = predictor.threshold if threshold is None else threshold
        predictor = Predictor(predictor.backend, predictor.image_size, tta=tta or predictor.tta, threshold=chosen)
    loss_fn = CombinedLoss()
    metrics: SegmentationMetrics | None = None
    rows: list[dict[str, Any]] = []
    loss_sum = 0.0
    for start in range(0, len(pairs.names), batch_size):
        images = pairs.images[start : start + batch_size]
        names = pairs.names[start : start + batch_size]
        # With TTA: log-probabilities (binary: the logit of the mean probability), whose class map and
        # loss are those of the mean prediction.
        logits = torch.from_numpy(predictor.network((images.float() / 255.0).numpy()))
        class_names = class_names_for(logits.shape[1])
        boundary = boundary_width_px if len(class_names) == 3 else 0  # binary: background and polyp only
        targets = mask_to_classes(pairs.masks[start : start + batch_size].bool(), boundary).long()
        if metrics is None:
            metrics = SegmentationMetrics(class_names, literature=True, threshold=predictor.threshold)
        loss_sum += float(loss_fn(logits, targets)) * len(images)
        boxes = [truth_boxes.get(name, []) for name in names] if truth_boxes else None
        metrics.update(logits, targets, truth_boxes=boxes)
        pred = predictor.class_map(logits).long()
        rows += _image_rows(names, pred, targets, metrics.last_image_scores, class_names)
    if metrics is None:
        metrics = SegmentationMetrics(literature=True)
    scores = {key: float(value) for key, value in metrics.compute().items()}
    scores["loss"] = loss_sum / max(len(pairs.names), 1)
    return EvaluationResult(scores, rows)


def _image_rows(
    names: Sequence[str],
    pred: torch.Tensor,
    targets: torch.Tensor,
    scores: dict[str, torch.Tensor],
    class_names: Sequence[str],
) -> list[dict[str, Any]]:
    """``per_image.csv`` rows of a batch: binary polyp scores, per-class Dice, pixel and polyp counts."""
    rows = []
    for row, name in enumerate(names):
        counts = class_counts(pred[row], targets[row], len(class_names))
        tp, fp, fn = counts.unbind(1)
        class_dice = ratio(2 * tp, 2 * tp + fp + fn, (fp == 0) & (fn == 0))
        rows.append(
            {
                "name": name,
                **{f"polyp_{k}": float(scores[k][row]) for k in ("dice", "iou", "precision", "recall")},
                "polyp_mean_dice_pranet": float(scores["mean_dice_pranet"][row]),
                **{f"dice_{n}": float(class_dice[c]) for c, n in enumerate(class_names)},
                "polyp_pixels_true": int(classes_to_mask(targets[row]).sum()),
                "polyp_pixels_pred": int(classes_to_mask(pred[row]).sum()),
                **{k: int(scores[k][row]) for k in ("polyps_true", "polyps_detected", "polyps_matched")},
            }
        )
    return rows


@dataclass(frozen=True)
class EvaluationOptions:
    """How :func:`run_evaluation` and :func:`run_evaluations` score (``polypseg evaluate``'s options).

    The CLI's defaults are these.

    Attributes:
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (:func:`~polypseg.evaluation.splits.resolve_split`).
            :func:`run_evaluations` scores folders other than the weights' training data whole.
        splits_file: A ``splits.json`` (``None``: the run's, else the split seeded as recorded in
            ``config.json``).
        batch_size: Images per batch.
        overwrite: Replace existing reports in the output folder (else they are refused).
        tta: Flip test-time augmentation (:func:`polypseg.tta.flip_tta`): four times the inference time.
        decoder_concat: The decoder concatenation order, passed to :func:`polypseg.load_pretrained`
            (``None``: what ``config.json`` records, else ``"skip-up"``).
        threshold: Binary weights: polyp where the sigmoid probability is at least this (``None``: the
            threshold recorded with the weights, :func:`~polypseg.inference.decision_threshold`).

    Example:
        >>> EvaluationOptions(split="val", tta=True).batch_size
        8
    """

    split: str = "test"
    splits_file: str | Path | None = None
    batch_size: int = 8
    overwrite: bool = False
    tta: bool = False
    decoder_concat: str | None = None
    threshold: float | None = None


@dataclass
class EvaluationReport:
    """Result of :func:`run_evaluation`."""

    result: EvaluationResult
    split: str
    split_source: str
    images: int
    detection_truth: str = "mask regions"
    tta: bool = False
    data: str = ""
    image_size: int = 256
    #: Name of the dataset in tables (the folder's name).
    dataset: str = ""
    #: The evaluated weights, resolved.
    weights: Weights | None = None
    #: The decoder concatenation order the weights were loaded with, and the binary threshold used.
    decoder_concat: str = "skip-up"
    threshold: float = DEFAULT_THRESHOLD


#: How ``metrics.json`` describes the ``lit_*`` measures' protocol.
LITERATURE_PROTOCOL = (
    "pysodmetrics on the polyp probability map (softmax polyp + boundary), min-max normalised to 8 bits, "
    "at the evaluation resolution (masks resized to it); PraNet resizes predictions to each mask's size instead"
)

#: Reports :func:`run_evaluation` writes into its output folder.
EVALUATION_FILES = ("metrics.json", "per_image.csv")
_PRECISIONS = {"32": "32", "32-true": "32", "bf16": "bf16", "bf16-mixed": "bf16"}


def evaluation_predictor(
    weights: WeightsLike,
    tta: bool = False,
    decoder_concat: str | None = None,
    threshold: float | None = None,
) -> Predictor:
    """The Predictor that ``polypseg evaluate`` scores with: the weights in PyTorch fp32 (CUDA where there is one).

    ``decoder_concat`` is passed to :func:`polypseg.load_pretrained`; ``threshold`` is the binary decision
    (``None``: the one recorded with the weights, :func:`~polypseg.inference.decision_threshold`).
    """
    weights = resolve(weights)
    chosen = decision_threshold(weights, threshold)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_pretrained(weights, decoder_concat=decoder_concat)
    return Predictor(model, weights.config.input_size, device=device, precision="32", tta=tta, threshold=chosen)


def run_evaluation(
    weights: WeightsLike,
    data_dir: str | Path,
    out_dir: str | Path | None,
    options: EvaluationOptions = EvaluationOptions(),
) -> EvaluationReport:
    """Evaluate weights on a split of a dataset folder and write ``metrics.json`` and ``per_image.csv``.

    With ``options.tta`` the scores are those of flip test-time augmentation (:func:`polypseg.tta.flip_tta`);
    ``metrics.json`` records ``"tta"`` either way, the task, the decoder concatenation order and, for
    binary weights, the ``threshold`` on the sigmoid probability that was used.

    Args:
        weights: The weights to score (``None``: the bundled model), resolved once.
        data_dir: Dataset folder with ``images/`` and ``masks/``.
        out_dir: Folder for ``metrics.json`` and ``per_image.csv`` (``None``: write nothing).
        options: Split, batch size, TTA, decoder order, threshold, overwrite (:class:`EvaluationOptions`).

    Example:
        >>> options = EvaluationOptions(split="val", tta=True)
        >>> report = run_evaluation(None, "../shared/datasets/kvasir-seg", None, options)  # doctest: +SKIP
    """
    if out_dir is not None:
        out_dir = Path(out_dir)
        refuse_existing([out_dir / name for name in EVALUATION_FILES], options.overwrite)
    weights = resolve(weights)
    names, source = resolve_split(weights, data_dir, options.split, options.splits_file)
    if not names:
        raise UsageError(f"split {options.split!r} is empty")
    by_name = {sample.name: sample for sample in find_pairs(data_dir)}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise UsageError(f"{len(missing)} images of the split are not in {data_dir}, e.g. {missing[0]!r}")
    image_size = weights.config.input_size
    pairs = load_pairs([by_name[name] for name in names], image_size)
    boxes = read_truth_boxes(data_dir, image_size)
    predictor = evaluation_predictor(weights, options.tta, options.decoder_concat, options.threshold)
    model = predictor.backend.model  # type: ignore[attr-defined]  # evaluation runs the U-Net (TorchBackend)
    result = evaluate(predictor, pairs, options.batch_size, weights.config.boundary_width_px, truth_boxes=boxes)
    detection_truth = "bounding-box file" if boxes is not None else "mask regions"
    report = EvaluationReport(result, options.split, source, len(names), detection_truth, options.tta, weights=weights)
    report.data, report.image_size, report.dataset = str(data_dir), image_size, Path(data_dir).resolve().name
    report.decoder_concat, report.threshold = model.decoder_concat, predictor.threshold
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {
            "weights": str(weights.path),
            "data": str(data_dir),
            "split": options.split,
            "split_source": source,
            "images": len(names),
            "detection_truth": detection_truth,
            "image_size": image_size,
            "tta": options.tta,
            "task": task_of(model.num_classes),
            "decoder_concat": model.decoder_concat,
            **({"threshold": predictor.threshold} if model.num_classes == 1 else {}),
            "metrics": {key: round(value, 6) for key, value in result.metrics.items()},
        }
        if "lit_mean_dice" in result.metrics:
            payload["literature_protocol"] = LITERATURE_PROTOCOL
        atomic_write_text(out_dir / "metrics.json", json.dumps(payload, indent=2) + "\n")
        atomic_write_csv(
            out_dir / "per_image.csv",
            list(result.rows[0]),
            ({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()} for row in result.rows),
        )
    return report


def run_evaluations(
    weights: WeightsLike,
    data_dirs: Sequence[str | Path],
    out_dir: str | Path | None,
    options: EvaluationOptions = EvaluationOptions(),
) -> list[tuple[str, EvaluationReport]]:
    """Evaluate weights on several dataset folders; returns ``(name, report)`` per folder, in order.

    The dataset the weights were trained on (:func:`is_training_dataset`) is scored on ``options.split``
    (with ``options.splits_file``, as :func:`run_evaluation`); every other folder is scored whole
    (``split="all"``). With ``out_dir``, each dataset's ``metrics.json`` and ``per_image.csv`` go to
    ``out_dir/<name>/`` (``<name>``: the folder's name) and the table of the literature measures to
    ``out_dir/literature.csv``. Existing reports are refused before anything is scored, unless
    ``options.overwrite``.
    """
    if not data_dirs:
        raise UsageError("no dataset folder to evaluate")
    names = dataset_names(data_dirs)
    if out_dir is not None:
        targets = [Path(out_dir) / LITERATURE_CSV]
        targets += [Path(out_dir) / name / file for name in names for file in EVALUATION_FILES]
        refuse_existing(targets, options.overwrite)
    weights = resolve(weights)
    whole = replace(options, split="all", splits_file=None)
    rows = []
    for name, data_dir in zip(names, data_dirs, strict=True):
        scored = options if is_training_dataset(data_dir, weights) else whole
        report = run_evaluation(weights, data_dir, None if out_dir is None else Path(out_dir) / name, scored)
        report.dataset = name
        rows.append((name, report))
    if out_dir is not None:
        atomic_write_text(Path(out_dir) / LITERATURE_CSV, literature_csv(rows))
    return rows
