"""``polypseg evaluate``: pick the split, score the model with the training loop, write the reports.

Writes ``metrics.json`` (every dataset-level score, the split, the weights) and ``per_image.csv`` (one row
per image). Scores are computed at the training resolution (images and masks resized as in training);
see :mod:`polypseg.metrics` for the conventions, including how images with empty masks count.

The polyp literature's measures (``lit_*``: mDice, mIoU, wFm, Sm, meanEm, maxEm, MAE, as in the PraNet
and Polyp-PVT tables) are computed by `pysodmetrics` on the polyp probability map (softmax of polyp +
boundary) at that same resolution, against the mask resized the same way (binarized at 128, nearest
neighbour, to the square input size). PraNet's protocol instead upsamples each prediction to its mask's
own size; the two differ slightly, mostly on thin borders. :func:`run_evaluations` scores several
dataset folders in one run and writes the table of these measures with one row per dataset.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polypseg.classes import CLASS_NAMES, DEFAULT_THRESHOLD, task_of
from polypseg.config import TrainConfig
from polypseg.data import find_pairs, load_pairs, load_splits, make_splits
from polypseg.io import atomic_write_text
from polypseg.metrics import LITERATURE_COLUMNS
from polypseg.model import DECODER_CONCATS
from polypseg.training import EvaluationResult, evaluate
from polypseg.weights import CONFIG_NAME, load_pretrained, read_model_config, resolve_weights

__all__ = [
    "ConcatFit",
    "EvaluationReport",
    "dataset_names",
    "format_literature_table",
    "format_table",
    "resolve_split",
    "run_evaluation",
    "run_evaluations",
    "score_concat_orders",
]


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
    #: The decoder concatenation order the weights were loaded with, and the binary threshold.
    decoder_concat: str = "skip-up"
    threshold: float = DEFAULT_THRESHOLD


BOXES_FILES = ("kavsir_bboxes.json", "bboxes.json")
#: How ``metrics.json`` describes the ``lit_*`` measures' protocol.
LITERATURE_PROTOCOL = (
    "pysodmetrics on the polyp probability map (softmax polyp + boundary), min-max normalised to 8 bits, "
    "at the evaluation resolution (masks resized to it); PraNet resizes predictions to each mask's size instead"
)
#: The table of :func:`run_evaluations`, written into its output folder.
LITERATURE_CSV = "literature.csv"


def read_truth_boxes(data_dir: str | Path, image_size: int) -> dict[str, list[tuple[int, int, int, int]]] | None:
    """Ground-truth polyp boxes scaled to the evaluation resolution, from Kvasir-SEG's bounding-box file.

    The file (``kavsir_bboxes.json``, misspelled as in the official archive, or ``bboxes.json``) maps
    an image name to ``{"height", "width", "bbox": [{"xmin", "ymin", "xmax", "ymax"}, ...]}``. Returns
    ``None`` when the folder has no such file (detection then uses the masks' connected regions).
    """
    for name in BOXES_FILES:
        path = Path(data_dir) / name
        if path.exists():
            break
    else:
        return None
    try:
        entries = json.loads(path.read_text())
        boxes = {}
        for image, entry in entries.items():
            sx, sy = image_size / float(entry["width"]), image_size / float(entry["height"])
            boxes[image] = [
                (round(b["xmin"] * sx), round(b["ymin"] * sy), round(b["xmax"] * sx), round(b["ymax"] * sy))
                for b in entry["bbox"]
            ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a bounding-box file of the Kvasir-SEG format ({error})") from None
    return boxes


def resolve_split(
    weights: str | Path | None, data_dir: str | Path, split: str, splits_file: str | Path | None
) -> tuple[list[str], str]:
    """Names of the images to score, and where the split came from.

    ``split="all"`` takes every pair in the folder. Otherwise the split comes from ``splits_file``, else
    from the ``splits.json`` of the run the weights belong to, else it is recomputed from the seed and
    split sizes recorded in the weights' ``config.json`` (the same deterministic split training made).
    """
    names = [sample.name for sample in find_pairs(data_dir)]
    if split == "all":
        return names, "all images in the folder"
    if split not in ("train", "val", "test"):
        raise ValueError(f"--split must be train, val, test or all, got {split!r}")
    if splits_file is None:
        folder = resolve_weights(weights)
        folder = folder if folder.is_dir() else folder.parent
        # A run folder keeps splits.json beside best/; a pushed Hub repository keeps it beside the weights.
        for candidate in (folder / "splits.json", folder.parent / "splits.json"):
            if candidate.exists():
                splits_file = candidate
                break
    if splits_file is not None:
        return load_splits(splits_file)[split], str(splits_file)
    record = read_model_config(weights).get("training", {})
    try:
        training = record.get("config") or {}
        recorded = TrainConfig().updated(
            **{key: training[key] for key in ("split_sizes", "seed", "max_images") if key in training}
        )
    except (TypeError, ValueError, AttributeError) as error:
        folder = resolve_weights(weights)
        config_path = (folder if folder.is_dir() else folder.parent) / CONFIG_NAME
        raise ValueError(f"{config_path}: training.config: {error}") from None
    sizes, seed, max_images = recorded.split_sizes, recorded.seed, recorded.max_images
    pool = names[:max_images] if max_images else names
    return make_splits(pool, sizes, seed)[split], f"seeded split (seed {seed}, sizes {sizes})"


def run_evaluation(
    weights: str | Path | None,
    data_dir: str | Path,
    out_dir: str | Path | None,
    split: str = "test",
    splits_file: str | Path | None = None,
    batch_size: int = 8,
    overwrite: bool = False,
    tta: bool = False,
    decoder_concat: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> EvaluationReport:
    """Evaluate weights on a split of a dataset folder and write ``metrics.json`` and ``per_image.csv``.

    With ``tta`` the scores are those of flip test-time augmentation (:func:`polypseg.tta.flip_tta`);
    ``metrics.json`` records ``"tta"`` either way, and the task (and, for binary weights, the
    ``threshold`` on the sigmoid probability). ``decoder_concat`` is passed to
    :func:`polypseg.load_pretrained`.
    """
    if out_dir is not None:
        out_dir = Path(out_dir)
        for name in ("metrics.json", "per_image.csv"):
            if (out_dir / name).exists() and not overwrite:
                raise FileExistsError(f"{out_dir / name}: exists; pass --overwrite to replace it")
    names, source = resolve_split(weights, data_dir, split, splits_file)
    if not names:
        raise ValueError(f"split {split!r} is empty")
    by_name = {sample.name: sample for sample in find_pairs(data_dir)}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ValueError(f"{len(missing)} images of the split are not in {data_dir}, e.g. {missing[0]!r}")
    model = load_pretrained(weights, decoder_concat=decoder_concat)
    config = read_model_config(weights)
    image_size = int(config.get("input_size", [256, 256])[0])
    boundary = int(config.get("boundary_width_px", 3))
    pairs = load_pairs([by_name[name] for name in names], image_size)
    boxes = read_truth_boxes(data_dir, image_size)
    result = evaluate(
        model,
        pairs,
        batch_size=batch_size,
        boundary_width_px=boundary,
        truth_boxes=boxes,
        tta=tta,
        threshold=threshold,
    )
    detection_truth = "bounding-box file" if boxes is not None else "mask regions"
    report = EvaluationReport(result, split, source, len(names), detection_truth, tta)
    report.data, report.image_size, report.dataset = str(data_dir), image_size, Path(data_dir).resolve().name
    report.decoder_concat, report.threshold = model.decoder_concat, threshold
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {
            "weights": str(resolve_weights(weights)),
            "data": str(data_dir),
            "split": split,
            "split_source": source,
            "images": len(names),
            "detection_truth": detection_truth,
            "image_size": image_size,
            "tta": tta,
            "task": task_of(model.num_classes),
            "decoder_concat": model.decoder_concat,
            **({"threshold": threshold} if model.num_classes == 1 else {}),
            "metrics": {key: round(value, 6) for key, value in result.metrics.items()},
        }
        if "lit_mean_dice" in result.metrics:
            payload["literature_protocol"] = LITERATURE_PROTOCOL
        atomic_write_text(out_dir / "metrics.json", json.dumps(payload, indent=2) + "\n")
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(result.rows[0]))
        writer.writeheader()
        writer.writerows(
            {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()} for row in result.rows
        )
        atomic_write_text(out_dir / "per_image.csv", buffer.getvalue())
    return report


def format_table(report: EvaluationReport) -> str:
    """A plain-text table of the scores."""
    m = report.result.metrics
    lines = [
        f"split {report.split}: {report.images} images ({report.split_source})"
        + (", flip test-time augmentation" if report.tta else ""),
        f"{'':28}{'Dice':>8}{'IoU':>8}",
    ]
    names = [name for name in CLASS_NAMES if f"dice_{name}" in m]  # binary weights: no boundary class
    for name in names:
        lines.append(f"{'class ' + name:28}{m[f'dice_{name}']:8.4f}{m[f'iou_{name}']:8.4f}")
    mean_label = "3-class mean (card)" if len(names) == 3 else f"{len(names)}-class mean"
    lines.append(f"{mean_label:28}{m['mean_dice']:8.4f}{m['mean_iou']:8.4f}")
    lines.append(f"{'polyp, mean per image':28}{m['polyp_dice']:8.4f}{m['polyp_iou']:8.4f}")
    lines.append(f"{'polyp, dataset-level':28}{m['polyp_dice_dataset']:8.4f}{m['polyp_iou_dataset']:8.4f}")
    lines.append(
        f"polyp precision {m['polyp_precision']:.4f} / recall {m['polyp_recall']:.4f} (per image), "
        f"{m['polyp_precision_dataset']:.4f} / {m['polyp_recall_dataset']:.4f} (dataset-level)"
    )
    if "polyp_mean_dice_pranet" in m:
        lines.append(
            f"polyp mean Dice, PraNet protocol (256 thresholds) {m['polyp_mean_dice_pranet']:.4f}, "
            f"best threshold {m['polyp_max_dice_pranet']:.4f}"
        )
    lines.append(
        f"polyps found (box IoU >= 0.5): recall {m['detection_recall']:.4f} "
        f"({int(m['polyps_detected'])}/{int(m['polyps_true'])}, {int(m['polyps_missed'])} missed), "
        f"precision {m['detection_precision']:.4f} ({int(m['false_detections'])} false detections; "
        f"truth: {report.detection_truth})"
    )
    lines.append(f"loss {m['loss']:.4f}")
    if "lit_mean_dice" in m:
        lines.append(f"polyp literature measures (probability map at {report.image_size}x{report.image_size}):")
        lines.append(format_literature_table([(report.dataset, report)]))
    return "\n".join(lines)


def format_literature_table(rows: Sequence[tuple[str, EvaluationReport]]) -> str:
    """The published polyp tables' columns (mDice, mIoU, wFm, Sm, meanEm, maxEm, MAE), one row per dataset."""
    width = max([len("dataset"), *(len(name) for name, _ in rows)]) + 2
    lines = [f"{'dataset':{width}}{'images':>7}" + "".join(f"{header:>8}" for header, _ in LITERATURE_COLUMNS)]
    for name, report in rows:
        m = report.result.metrics
        cells = "".join(f"{m[key]:8.3f}" if key in m else f"{'n/a':>8}" for _, key in LITERATURE_COLUMNS)
        lines.append(f"{name:{width}}{report.images:7d}{cells}")
    return "\n".join(lines)


def literature_csv(rows: Sequence[tuple[str, EvaluationReport]]) -> str:
    """:func:`format_literature_table` as CSV, with each dataset's folder, split and image count."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "data", "split", "images", "tta", *(header for header, _ in LITERATURE_COLUMNS)])
    for name, report in rows:
        m = report.result.metrics
        writer.writerow(
            [name, report.data, report.split, report.images, report.tta]
            + [f"{m[key]:.4f}" if key in m else "" for _, key in LITERATURE_COLUMNS]
        )
    return buffer.getvalue()


_KVASIR_SEG_NAME = re.compile(r"kvasir[-_ ]?seg", re.IGNORECASE)


def is_training_dataset(data_dir: str | Path, weights: str | Path | None) -> bool:
    """Whether ``data_dir`` is the dataset the weights were trained on, whose train/val/test split applies.

    True for a folder named like Kvasir-SEG (``kvasir-seg``, ``Kvasir-SEG``, ``kvasir_seg``) or with the
    folder name of the ``data_dir`` recorded in the weights' ``config.json``.
    """
    name = Path(data_dir).resolve().name
    if _KVASIR_SEG_NAME.search(name):
        return True
    trained_on = read_model_config(weights).get("training", {}).get("config", {}).get("data_dir")
    return bool(trained_on) and Path(str(trained_on)).name == name


def dataset_names(data_dirs: Sequence[str | Path]) -> list[str]:
    """A distinct subfolder name per dataset folder: its own name, numbered when two share it."""
    names: list[str] = []
    for data_dir in data_dirs:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(data_dir).resolve().name) or "dataset"
        name, number = base, 2
        while name in names:
            name, number = f"{base}-{number}", number + 1
        names.append(name)
    return names


def run_evaluations(
    weights: str | Path | None,
    data_dirs: Sequence[str | Path],
    out_dir: str | Path | None,
    split: str = "test",
    splits_file: str | Path | None = None,
    batch_size: int = 8,
    overwrite: bool = False,
    tta: bool = False,
    decoder_concat: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> list[tuple[str, EvaluationReport]]:
    """Evaluate weights on several dataset folders; returns ``(name, report)`` per folder, in order.

    The dataset the weights were trained on (:func:`is_training_dataset`) is scored on ``split`` (with
    ``splits_file``, as :func:`run_evaluation`); every other folder is scored whole (``split="all"``).
    With ``out_dir``, each dataset's ``metrics.json`` and ``per_image.csv`` go to ``out_dir/<name>/``
    (``<name>``: the folder's name) and the table of the literature measures to ``out_dir/literature.csv``.
    Existing reports are refused before anything is scored, unless ``overwrite``.
    """
    if not data_dirs:
        raise ValueError("no dataset folder to evaluate")
    names = dataset_names(data_dirs)
    if out_dir is not None and not overwrite:
        out_dir = Path(out_dir)
        targets = [out_dir / LITERATURE_CSV]
        targets += [out_dir / name / file for name in names for file in ("metrics.json", "per_image.csv")]
        for path in targets:
            if path.exists():
                raise FileExistsError(f"{path}: exists; pass --overwrite to replace it")
    rows = []
    for name, data_dir in zip(names, data_dirs, strict=True):
        training_data = is_training_dataset(data_dir, weights)
        report = run_evaluation(
            weights,
            data_dir,
            None if out_dir is None else Path(out_dir) / name,
            split=split if training_data else "all",
            splits_file=splits_file if training_data else None,
            batch_size=batch_size,
            overwrite=overwrite,
            tta=tta,
            decoder_concat=decoder_concat,
            threshold=threshold,
        )
        report.dataset = name
        rows.append((name, report))
    if out_dir is not None:
        atomic_write_text(Path(out_dir) / LITERATURE_CSV, literature_csv(rows))
    return rows


@dataclass
class ConcatFit:
    """How well each decoder concatenation order fits weights on labelled images (:func:`score_concat_orders`).

    Attributes:
        dice: Polyp Dice, mean per image, by order (``"skip-up"``, ``"up-skip"``).
        images: How many labelled images were scored.
    """

    dice: dict[str, float]
    images: int

    @property
    def best(self) -> str:
        """The order with the higher Dice."""
        return max(self.dice, key=lambda order: self.dice[order])


def score_concat_orders(
    weights: str | Path | None,
    data_dir: str | Path,
    max_images: int = 20,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 8,
) -> ConcatFit:
    """Score weights with both decoder concatenation orders on up to ``max_images`` labelled images.

    The tensors cannot tell the order; a trained network gives good masks with its own order and poor
    ones with the other. The images are spread evenly over the folder's pairs (sorted by name) and scored
    by :func:`polypseg.training.evaluate` (polyp Dice, mean per image) at the weights' input size.

    Raises:
        DatasetError: The folder holds no usable image/mask pairs (all problems named).
    """
    samples = find_pairs(data_dir)
    if not samples:
        raise ValueError(f"{data_dir}: no labelled images (images/ and masks/)")
    step = max(len(samples) / max_images, 1.0)
    picked = [samples[int(i * step)] for i in range(min(max_images, len(samples)))]
    image_size = int(read_model_config(weights).get("input_size", [256, 256])[0])
    pairs = load_pairs(picked, image_size)
    dice = {}
    for order in DECODER_CONCATS:
        model = load_pretrained(weights, decoder_concat=order)
        result = evaluate(model, pairs, batch_size=batch_size, threshold=threshold)
        dice[order] = result.metrics["polyp_dice"]
    return ConcatFit(dice, len(picked))
