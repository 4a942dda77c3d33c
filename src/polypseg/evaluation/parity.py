"""Parity of an export with PyTorch: both run through the Predictor on the same real images.

``polypseg export`` calls :func:`export_parity` after :func:`polypseg.deploy.export.export_model`: every
written model runs beside the PyTorch fp32 model on the same images, preprocessed by the same
:meth:`~polypseg.inference.Predictor.network_input`; the maximum absolute logit difference and the share
of pixels whose class agrees (:meth:`~polypseg.inference.Predictor.class_map`: the argmax, or for a binary
model, one channel, the sigmoid at the threshold) are returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from polypseg.deploy.backends import OnnxRuntimeBackend, OpenVINOBackend
from polypseg.images import read_image
from polypseg.inference import Predictor
from polypseg.weights import WeightsLike, bundled_examples_dir, load_pretrained, resolve

__all__ = ["Parity", "export_parity", "parity"]


@dataclass
class Parity:
    """Agreement of a backend with PyTorch fp32 on some images."""

    name: str
    max_abs_logit_difference: float
    argmax_agreement: float  # share of pixels with the same class

    def __str__(self) -> str:
        return (
            f"{self.name}: max |logit difference| {self.max_abs_logit_difference:.2e}, "
            f"class agreement {100 * self.argmax_agreement:.3f}%"
        )


def parity(
    reference: Predictor, candidate: Predictor, images: Sequence[np.ndarray], name: str, batch_size: int = 4
) -> Parity:
    """Compare two predictors' network outputs and class maps on (H, W, 3) uint8 images, at the input size."""
    worst, agree, total = 0.0, 0, 0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        expected = reference.network(reference.network_input(batch))
        actual = candidate.network(candidate.network_input(batch))
        worst = max(worst, float(np.abs(expected - actual).max()))
        agree += int((reference.class_map(expected) == candidate.class_map(actual)).sum())
        total += expected.shape[0] * expected.shape[2] * expected.shape[3]
    return Parity(name, worst, agree / max(total, 1))


def export_parity(
    weights: WeightsLike,
    export_dir: str | Path,
    fmt: str,
    images: Sequence[str | Path] = (),
    int8: bool = False,
    decoder_concat: str | None = None,
) -> list[Parity]:
    """Run the models of an export folder beside the weights' PyTorch fp32 model.

    Args:
        weights: The exported weights.
        export_dir: The folder :func:`~polypseg.deploy.export.export_model` wrote.
        fmt: ``"onnx"`` or ``"openvino"`` (OpenVINO exports hold the ONNX file too).
        images: Real images (default: the bundled examples).
        int8: The export holds ``model_int8.xml``.
        decoder_concat: The decoder concatenation order the export was made with (see
            :func:`polypseg.load_pretrained`), for weights whose ``config.json`` does not say it.

    Returns:
        One :class:`Parity` per model: ONNX Runtime fp32, then OpenVINO fp32 and int8 where written.
    """
    weights = resolve(weights)
    size = weights.config.input_size
    pictures = [read_image(path) for path in (images or sorted(bundled_examples_dir().glob("*.jpg")))]
    reference = Predictor(load_pretrained(weights, decoder_concat=decoder_concat), size, precision="32")
    candidates = [("onnxruntime fp32", OnnxRuntimeBackend(Path(export_dir) / "model.onnx"))]
    if fmt == "openvino":
        candidates.append(("openvino fp32", OpenVINOBackend(export_dir, "32")))
        if int8:
            candidates.append(("openvino int8", OpenVINOBackend(export_dir, "int8")))
    return [parity(reference, Predictor(backend, size), pictures, name) for name, backend in candidates]
