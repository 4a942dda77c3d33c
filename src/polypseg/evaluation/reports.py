"""Figures people look at: Dice histogram and worst cases of an evaluation, training curves of a run.

* :func:`write_evaluation_figures` (``polypseg evaluate --report``): ``dice_histogram.png`` (per-image
  binary polyp Dice) and ``worst_cases.png`` (the images with the lowest polyp Dice: image, ground truth,
  prediction, at the evaluation resolution).
* :func:`plot_training_curves` (end of ``polypseg train``): ``training_curves.png`` from ``metrics.csv``.

Figures are drawn with Matplotlib's Agg canvas directly (no pyplot, no display, no global backend
state) and written atomically.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from polypseg.classes import mask_to_classes
from polypseg.data import find_pairs, load_pairs
from polypseg.errors import InputError, one_line
from polypseg.evaluation.evaluate import EvaluationReport, evaluation_predictor
from polypseg.files import atomic_save
from polypseg.inference import CLASS_PALETTE
from polypseg.weights import WeightsLike, resolve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "EVALUATION_FIGURES",
    "WORST_CASES",
    "plot_dice_histogram",
    "plot_training_curves",
    "plot_worst_cases",
    "worst_cases",
    "write_evaluation_figures",
]

#: Files written by ``polypseg evaluate --report``.
EVALUATION_FIGURES = ("dice_histogram.png", "worst_cases.png")
#: How many images ``worst_cases.png`` shows.
WORST_CASES = 5
DPI = 100


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    atomic_save(path, lambda temporary: figure.savefig(temporary, format="png", dpi=DPI))
    return path


def worst_cases(rows: Sequence[dict[str, Any]], count: int = WORST_CASES) -> list[str]:
    """Names of the ``count`` images with the lowest binary polyp Dice, worst first (ties by name)."""
    ranked = sorted(rows, key=lambda row: (float(row["polyp_dice"]), str(row["name"])))
    return [str(row["name"]) for row in ranked[:count]]


def plot_dice_histogram(rows: Sequence[dict[str, Any]], out_png: str | Path) -> Path:
    """Histogram of the per-image binary polyp Dice (``EvaluationResult.rows``), with its mean."""
    dice = np.array([float(row["polyp_dice"]) for row in rows])
    figure = _figure(6.4, 4.0)
    axes = figure.add_subplot()
    axes.hist(dice, bins=np.linspace(0.0, 1.0, 21), color="#3a7d44", edgecolor="white")
    axes.axvline(dice.mean(), color="black", linestyle="--", label=f"mean {dice.mean():.3f}")
    axes.axvline(float(np.median(dice)), color="grey", linestyle=":", label=f"median {np.median(dice):.3f}")
    axes.set(
        xlim=(0, 1),
        xlabel="binary polyp Dice",
        ylabel="images",
        title=f"Polyp Dice per image ({len(dice)} images)",
    )
    axes.legend(loc="upper left")
    axes.yaxis.get_major_locator().set_params(integer=True)
    return _save(figure, out_png)


def _colour(class_map: np.ndarray) -> np.ndarray:
    return np.asarray(CLASS_PALETTE, dtype=np.uint8)[class_map]


def plot_worst_cases(
    weights: WeightsLike,
    data_dir: str | Path,
    names: Sequence[str],
    out_png: str | Path,
    scores: dict[str, float] | None = None,
    tta: bool = False,
    decoder_concat: str | None = None,
    threshold: float | None = None,
) -> Path:
    """Image, ground truth and prediction (class maps) of ``names``, one row each, at the evaluation resolution.

    The images and masks are loaded and resized as in evaluation (:func:`polypseg.data.load_pairs`) and the
    network runs through the same Predictor as ``polypseg evaluate`` (fp32,
    :func:`~polypseg.evaluation.evaluate.evaluation_predictor`).

    Args:
        weights: The evaluated weights (``None``: the bundled model).
        data_dir: Dataset folder with ``images/`` and ``masks/``.
        names: Images to show, in order.
        out_png: Output file.
        scores: Polyp Dice per name, shown in the row titles.
        tta: Predict with flip test-time augmentation, as ``polypseg evaluate --tta`` did.
        decoder_concat: The decoder concatenation order (see :func:`polypseg.load_pretrained`).
        threshold: Binary weights: polyp where the sigmoid probability is at least this (``None``: the
            threshold recorded with the weights).
    """
    weights = resolve(weights)
    by_name = {sample.name: sample for sample in find_pairs(data_dir)}
    pairs = load_pairs([by_name[name] for name in names], weights.config.input_size)
    predictor = evaluation_predictor(weights, tta, decoder_concat, threshold)
    logits = predictor.network((pairs.images.float() / 255.0).numpy())
    predicted = predictor.class_map(logits).numpy()
    # Binary weights predict background and polyp only: their truth has no boundary class either.
    boundary = weights.config.boundary_width_px if logits.shape[1] != 1 else 0
    truth = mask_to_classes(pairs.masks.bool(), boundary).numpy()
    figure = _figure(9.0, 3.0 * len(names) + 0.3)
    grid = figure.subplots(len(names), 3, squeeze=False)
    for row, name in enumerate(names):
        image = pairs.images[row].permute(1, 2, 0).numpy()
        score = f", polyp Dice {scores[name]:.3f}" if scores and name in scores else ""
        for column, (picture, title) in enumerate(
            ((image, f"{name}{score}"), (_colour(truth[row]), "ground truth"), (_colour(predicted[row]), "prediction"))
        ):
            axes = grid[row][column]
            axes.imshow(picture, interpolation="nearest")
            axes.set_title(title, fontsize=9)
            axes.set_axis_off()
    figure.suptitle("Lowest polyp Dice (green: polyp, yellow: boundary)")
    return _save(figure, out_png)


def write_evaluation_figures(
    report: EvaluationReport,
    weights: WeightsLike,
    data_dir: str | Path,
    out_dir: str | Path,
    count: int = WORST_CASES,
) -> list[Path]:
    """Write ``dice_histogram.png`` and ``worst_cases.png`` for a finished evaluation into ``out_dir``."""
    rows = report.result.rows
    worst = worst_cases(rows, count)
    scores = {str(row["name"]): float(row["polyp_dice"]) for row in rows}
    histogram, cases = (Path(out_dir) / name for name in EVALUATION_FIGURES)
    return [
        plot_dice_histogram(rows, histogram),
        plot_worst_cases(weights, data_dir, worst, cases, scores, report.tta, report.decoder_concat, report.threshold),
    ]


def _column(rows: Sequence[dict[str, str]], name: str, path: Path) -> np.ndarray:
    try:
        return np.array([float(row[name]) if row.get(name) else math.nan for row in rows])
    except ValueError as error:  # a hand-edited cell that is not a number
        raise InputError(path, f"column {name!r}: {one_line(error)}") from None


def plot_training_curves(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Loss (train and validation), validation Dice and learning rate per epoch, from a run's ``metrics.csv``.

    Raises:
        InputError: ``metrics.csv`` cannot be read, has no epochs or a value that is not a number.
    """
    metrics_csv = Path(metrics_csv)
    try:
        with metrics_csv.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(metrics_csv, f"cannot read CSV ({one_line(error)})") from None
    if not rows:
        raise InputError(metrics_csv, "no epochs to plot")
    epochs = _column(rows, "epoch", metrics_csv)
    figure = _figure(13.0, 3.8)
    loss, dice, lr = figure.subplots(1, 3)

    def plot(axes: Any, column: str, **style: Any) -> None:
        values = _column(rows, column, metrics_csv)
        if not np.isnan(values).all():  # columns an older or shorter run did not log stay out of the legend
            axes.plot(epochs, values, marker="o", markersize=3, **style)

    plot(loss, "train_loss", label="train")
    plot(loss, "val_loss", label="validation")
    loss.set(title="Loss", xlabel="epoch")
    plot(dice, "val_dice", label="3-class mean")
    plot(dice, "val_polyp_dice", label="binary polyp")
    dice.set(title="Validation Dice", xlabel="epoch", ylim=(0, 1))
    plot(lr, "lr", color="black")
    lr.set(title="Learning rate", xlabel="epoch", yscale="log")
    for axes in (loss, dice):
        if axes.lines:
            axes.legend()
    for axes in (loss, dice, lr):
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(f"{metrics_csv.parent.name}: {len(rows)} epochs")
    return _save(figure, out_png)
