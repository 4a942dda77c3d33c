"""Which decoder concatenation order fits weights: both orders scored on labelled images (``polypseg inspect --data``).

The tensors of a U-Net cannot tell whether its decoder concatenates ``[skip, upsampled]`` or
``[upsampled, skip]`` (the shapes are the same); a trained network gives good masks with its own order and
poor ones with the other. :func:`score_concat_orders` scores both through the Predictor, as ``polypseg
evaluate`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from polypseg.classes import DEFAULT_THRESHOLD
from polypseg.data import find_pairs, load_pairs
from polypseg.errors import UsageError
from polypseg.evaluation.evaluate import evaluate, evaluation_predictor
from polypseg.model import DECODER_CONCATS
from polypseg.weights import WeightsLike, resolve

__all__ = ["ConcatFit", "score_concat_orders"]


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
    weights: WeightsLike,
    data_dir: str | Path,
    max_images: int = 20,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 8,
) -> ConcatFit:
    """Score weights with both decoder concatenation orders on up to ``max_images`` labelled images.

    The images are spread evenly over the folder's pairs (sorted by name) and scored by
    :func:`~polypseg.evaluation.evaluate.evaluate` through the evaluation Predictor (polyp Dice, mean per
    image) at the weights' input size.

    Raises:
        UsageError: The folder holds no labelled images.
    """
    weights = resolve(weights)
    samples = find_pairs(data_dir)
    if not samples:
        raise UsageError(f"{data_dir}: no labelled images (images/ and masks/)")
    step = max(len(samples) / max_images, 1.0)
    picked = [samples[int(i * step)] for i in range(min(max_images, len(samples)))]
    pairs = load_pairs(picked, weights.config.input_size)
    dice = {}
    for order in DECODER_CONCATS:
        predictor = evaluation_predictor(weights, decoder_concat=order, threshold=threshold)
        result = evaluate(predictor, pairs, batch_size=batch_size, boundary_width_px=weights.config.boundary_width_px)
        dice[order] = result.metrics["polyp_dice"]
    return ConcatFit(dice, len(picked))
