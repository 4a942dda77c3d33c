"""The tables of ``polypseg evaluate``: the scores as text, and the polyp literature's table as text and CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

from polypseg.classes import CLASS_NAMES
from polypseg.metrics import LITERATURE_COLUMNS

if TYPE_CHECKING:
    from polypseg.evaluation.evaluate import EvaluationReport

__all__ = ["LITERATURE_CSV", "format_literature_table", "format_table", "literature_csv"]

#: The table of :func:`~polypseg.evaluation.evaluate.run_evaluations`, written into its output folder.
LITERATURE_CSV = "literature.csv"


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
