"""The Predictor: the one way polypseg runs the network and takes the class map.

:class:`Predictor` separates "load the trained model" from "predict these images". Each image is resized
to the network's input size exactly as in training (:func:`polypseg.images.network_input`), the logits
are resized back to the image's own size (bilinear) and the class map is taken there
(:meth:`Predictor.class_map`: the argmax, or for the binary variant, one channel, polyp where the sigmoid
is at least ``threshold``), so masks follow the original resolution rather than a blocky upscaled
256x256 map. With ``tta=True`` the network's output is the flip test-time augmentation of
:func:`polypseg.tta.flip_tta`. Prediction of files, video, the web demo, evaluation, its figures and the
export's parity check all run the network through :meth:`Predictor.network` and take the class map with
:meth:`Predictor.class_map`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from polypseg.classes import DEFAULT_THRESHOLD, classes_to_mask, logits_to_classes, polyp_probability
from polypseg.deploy.backends import Backend, TorchBackend
from polypseg.deploy.runtime import load_backend
from polypseg.errors import UsageError
from polypseg.images import network_input
from polypseg.metrics import PolypRegion, find_polyps
from polypseg.model import UNet
from polypseg.tta import flip_tta
from polypseg.weights import Weights, WeightsLike, resolve

__all__ = [
    "DEFAULT_INPUT_SIZE",
    "PolypRegion",
    "Prediction",
    "Predictor",
    "decision_threshold",
    "validate_batch_size",
    "validate_opacity",
    "validate_threshold",
]

#: The network's input side where the weights do not record one.
DEFAULT_INPUT_SIZE = 256


def validate_batch_size(batch_size: object) -> int:
    """``batch_size`` if it is a whole number of at least 1, else a one-line :class:`~polypseg.errors.UsageError`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise UsageError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
    return int(batch_size)


def validate_threshold(threshold: object) -> float:
    """``threshold`` if it is a number from 0 to 1, else a one-line :class:`~polypseg.errors.UsageError`."""
    if not _is_fraction(threshold):
        raise UsageError(f"threshold must be a number from 0 to 1, got {threshold!r}")
    return float(threshold)


def validate_opacity(opacity: object) -> float:
    """``opacity`` if it is a number from 0 to 1, else a one-line :class:`~polypseg.errors.UsageError`."""
    if not _is_fraction(opacity):
        raise UsageError(f"opacity must be a number from 0 to 1, got {opacity!r}")
    return float(opacity)


def _is_fraction(value: object) -> bool:
    """Whether ``value`` is a number (not a bool) from 0 to 1; NaN is not."""
    return not isinstance(value, bool) and isinstance(value, int | float | np.number) and 0 <= value <= 1


def decision_threshold(weights: Weights, threshold: float | None = None) -> float:
    """The binary decision threshold to use with ``weights``: ``threshold`` where given, else the recorded one.

    The one place where "the threshold recorded with the weights" is read: the ``threshold`` of their
    ``config.json`` (:attr:`polypseg.weights.config.WeightsConfig.threshold`; 0.5 where none is recorded). Only
    binary weights (one output channel) use it; 3-class weights take the argmax.

    Args:
        weights: Resolved weights (:func:`polypseg.weights.resolve`).
        threshold: A threshold from 0 to 1 that wins over the recorded one; ``None``: the recorded one.

    Raises:
        UsageError: ``threshold`` is not a number from 0 to 1. (A recorded threshold that is not is refused
            when ``config.json`` is read, as a :class:`~polypseg.errors.WeightsError` naming it.)

    Example:
        >>> decision_threshold(resolve(None))  # the bundled (3-class) model records none
        0.5
    """
    if threshold is not None:
        return validate_threshold(threshold)
    return weights.config.threshold  # checked when config.json was read


@dataclass
class Prediction:
    """Segmentation of one image at its own resolution.

    Attributes:
        class_map: (H, W) uint8, 0 background, 1 polyp, 2 boundary (binary models: 0 and 1 only).
        polyps: Connected polyp regions (8-connectivity) of at least the predictor's minimum area,
            largest first.
    """

    class_map: np.ndarray
    polyps: list[PolypRegion] = field(default_factory=list)

    @property
    def polyp_mask(self) -> np.ndarray:
        """Boolean (H, W) polyp mask (classes 1 and 2)."""
        return classes_to_mask(self.class_map)

    @property
    def polyp_area_percent(self) -> float:
        """Share of the image covered by the polyp mask, in percent."""
        return 100.0 * float(self.polyp_mask.mean())


class Predictor:
    """A loaded model that segments images.

    Args:
        model: A U-Net (run with PyTorch) or any :class:`~polypseg.deploy.backends.Backend` (ONNX Runtime,
            OpenVINO, ...).
        image_size: Network input size (the training resolution), square.
        device: Torch device (PyTorch models only).
        precision: For a U-Net: ``"auto"`` (bf16 autocast where the CPU/GPU computes bf16 natively,
            else fp32), ``"32"`` or ``"bf16"``. A backend brings its own precision.
        min_polyp_fraction: Regions smaller than this share of the image are not counted as polyps
            (they stay in the mask). Default 0.1 %. From 0 to 1.
        tta: Flip test-time augmentation (:func:`polypseg.tta.flip_tta`): average the predictions of the
            image and its horizontal, vertical and double flips. Four times the inference time.
        threshold: Binary models (one output channel): polyp where the sigmoid probability is at least
            this, from 0 to 1. Not used by 3-class models (argmax). :meth:`from_pretrained` defaults it to
            the threshold recorded with the weights.

    Example:
        >>> predictor = Predictor.from_pretrained()  # the bundled model
        >>> prediction = predictor.predict(np.zeros((300, 400, 3), np.uint8))
        >>> prediction.class_map.shape
        (300, 400)
    """

    def __init__(
        self,
        model: UNet | Backend,
        image_size: int = DEFAULT_INPUT_SIZE,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        min_polyp_fraction: float = 0.001,
        tta: bool = False,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        if not _is_fraction(min_polyp_fraction):
            raise UsageError(f"minimum polyp fraction must be a number from 0 to 1, got {min_polyp_fraction!r}")
        self.threshold = validate_threshold(threshold)
        self.backend: Backend = TorchBackend(model, precision, device) if isinstance(model, UNet) else model
        self.image_size = image_size
        self.precision = self.backend.precision
        self.min_polyp_fraction = min_polyp_fraction
        self.tta = tta

    @classmethod
    def from_pretrained(
        cls,
        weights: WeightsLike = None,
        backend: str = "torch",
        precision: str = "auto",
        tta: bool = False,
        images: int | None = None,
        decoder_concat: str | None = None,
        threshold: float | None = None,
        **kwargs: object,
    ) -> Predictor:
        """Load weights (see :func:`polypseg.load_pretrained`; ``None`` is the bundled model).

        Args:
            weights: Weights folder/file/run folder/``hf://`` reference, an export folder, or weights
                resolved already (:func:`polypseg.weights.resolve`).
            backend: ``"torch"``, ``"onnxruntime"``, ``"openvino"`` or ``"auto"`` (the fastest installed;
                see :func:`polypseg.deploy.runtime.load_backend`, which exports once and caches the result).
            precision: ``"auto"``, ``"32"``, ``"bf16"`` or (OpenVINO) ``"int8"``.
            tta: Flip test-time augmentation (see the class), with any backend.
            images: For ``backend="auto"``: how many images are about to be segmented (``None``: unknown
                or many), so that a first export is made only where it pays.
            decoder_concat: The decoder's concatenation order, ``"skip-up"`` or ``"up-skip"``, for weights
                whose ``config.json`` does not say it (see :func:`polypseg.load_pretrained`).
            threshold: Binary weights: polyp where the sigmoid probability is at least this; ``None``: the
                threshold recorded with the weights (:func:`decision_threshold`; 0.5 where none is).
            **kwargs: Passed to the constructor (``min_polyp_fraction``, ``device``).
        """
        weights = resolve(weights)
        chosen = decision_threshold(weights, threshold)
        loaded = load_backend(weights, backend, precision, images, decoder_concat=decoder_concat)
        return cls(loaded, image_size=weights.config.input_size, tta=tta, threshold=chosen, **kwargs)  # type: ignore[arg-type]

    def network_input(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(H, W, 3) uint8 RGB images -> the network's input batch (:func:`polypseg.images.network_input`)."""
        return network_input(images, self.image_size)

    def network(self, pixels: np.ndarray) -> np.ndarray:
        """Run the network on a prepared batch: float32 (B, 3, S, S) in [0, 1] -> (B, C, S, S) float32.

        The one place the network runs: logits, or with ``tta`` the log of the mean flip probabilities
        (:func:`polypseg.tta.flip_tta`), whose argmax, softmax and cross-entropy are the augmented ones.
        Evaluation calls it on its cached batches, :meth:`predict_batch` on resized images.
        """
        return flip_tta(self.backend, pixels) if self.tta else self.backend(pixels)

    def class_map(self, logits: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The class map (..., H, W) uint8 of :meth:`network`'s output (..., C, H, W), at any resolution.

        The one place logits become classes (:func:`polypseg.classes.logits_to_classes`): the argmax over
        C, or for one channel (the binary variant) polyp where the sigmoid is at least ``threshold``. With
        TTA the output is the log of the mean probabilities (binary: the logit of the mean probability),
        and the class map is taken the same way.
        """
        tensor = torch.from_numpy(np.asarray(logits)) if isinstance(logits, np.ndarray) else logits
        return logits_to_classes(tensor, self.threshold)

    @staticmethod
    def polyp_probability(logits: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Polyp probability (..., H, W) of :meth:`network`'s output: sigmoid (binary) or softmax polyp + boundary."""
        tensor = torch.from_numpy(np.asarray(logits)) if isinstance(logits, np.ndarray) else logits
        return polyp_probability(tensor)

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Segment (H, W, 3) uint8 RGB images of any sizes; returns one :class:`Prediction` each."""
        if not images:
            return []
        logits = torch.from_numpy(self.network(self.network_input(images)))
        predictions = []
        for image, image_logits in zip(images, logits, strict=True):
            height, width = image.shape[:2]
            full = F.interpolate(image_logits[None], size=(height, width), mode="bilinear", align_corners=False)
            class_map = self.class_map(full[0]).numpy()
            min_pixels = int(np.ceil(self.min_polyp_fraction * height * width))
            predictions.append(Prediction(class_map, find_polyps(classes_to_mask(class_map), min_pixels)))
        return predictions

    def predict(self, image: np.ndarray) -> Prediction:
        """Segment one (H, W, 3) uint8 RGB image."""
        return self.predict_batch([image])[0]
