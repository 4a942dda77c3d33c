"""Inference: the Predictor (the one way to run the network), files and video through it, and their outputs.

* :mod:`~polypseg.inference.predictor`: :class:`Predictor`, :class:`Prediction`, :func:`decision_threshold`.
* :mod:`~polypseg.inference.outputs`: palette class map, mask and overlay of one image, output names.
* :mod:`~polypseg.inference.streaming`: :func:`predict_files` (``polypseg predict`` on images).
* :mod:`~polypseg.inference.video`: :func:`~polypseg.inference.video.predict_videos` (videos; needs PyAV).

Example:
    >>> from polypseg.inference import Predictor
    >>> Predictor.from_pretrained().predict(np.zeros((64, 96, 3), np.uint8)).class_map.shape  # doctest: +SKIP
    (64, 96)
"""

from polypseg.files import expand_inputs
from polypseg.inference.outputs import (
    CLASS_PALETTE,
    CSV_COLUMNS,
    JPEG_QUALITY,
    OUTPUT_SUFFIXES,
    OVERLAY_FORMATS,
    output_stems,
    output_suffixes,
    overlay,
)
from polypseg.inference.predictor import (
    PolypRegion,
    Prediction,
    Predictor,
    decision_threshold,
    validate_batch_size,
    validate_opacity,
    validate_threshold,
)
from polypseg.inference.streaming import PredictionSummary, predict_files, print_result
from polypseg.metrics import find_polyps

__all__ = [
    "CLASS_PALETTE",
    "CSV_COLUMNS",
    "JPEG_QUALITY",
    "OUTPUT_SUFFIXES",
    "OVERLAY_FORMATS",
    "PolypRegion",
    "Prediction",
    "PredictionSummary",
    "Predictor",
    "decision_threshold",
    "expand_inputs",
    "find_polyps",
    "output_stems",
    "output_suffixes",
    "overlay",
    "predict_files",
    "print_result",
    "validate_batch_size",
    "validate_opacity",
    "validate_threshold",
]
