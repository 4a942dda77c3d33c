"""Weights on disk: ``model.safetensors`` + ``config.json`` in one folder, and loading them back.

* :func:`save_pretrained` writes our layout (atomically, file by file).
* :func:`load_pretrained` rebuilds a :class:`~polypseg.model.UNet` from such a folder, from a bare
  ``.safetensors`` file, from the bundled model (no argument), or from a checkpoint of the same
  architecture written by someone else with other tensor names (matched by structure, see
  :func:`~polypseg.weights.foreign.map_foreign_state_dict`). Only safetensors are read: nothing is ever unpickled.
* :func:`inspect_weights` says what was read off a file: task, width, classes, head kernel, biases, and
  the decoder's concatenation order.

Either member of the card's family loads: the 3-class model and its binary sibling (one output channel).
What the tensors cannot tell is the decoder's concatenation order (``[skip, upsampled]`` or
``[upsampled, skip]``: the shapes are the same). polypseg's own ``config.json`` records it
(``decoder_concat``); for a file without one, ``skip-up`` is assumed and one line on stderr (logger
``polypseg.weights``, level WARNING) says so and how to choose the other (``decoder_concat="up-skip"``,
``--decoder-concat up-skip``); ``polypseg inspect WEIGHTS --data DIR`` scores both orders on labelled images.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from polypseg.classes import DEFAULT_BOUNDARY_WIDTH_PX, class_names_for, task_of
from polypseg.errors import UsageError, WeightsError
from polypseg.files import atomic_save, atomic_write_text
from polypseg.model import DECODER_CONCATS, UNet
from polypseg.weights.config import CONFIG_NAME, WEIGHTS_NAME
from polypseg.weights.foreign import expected_shapes, map_foreign_state_dict_with_notes
from polypseg.weights.reference import WeightsLike, resolve

__all__ = ["WeightsInfo", "inspect_weights", "load_pretrained", "read_model_config", "save_pretrained"]

#: One line on stderr per file whose concatenation order had to be assumed ("polypseg.weights").
logger = logging.getLogger("polypseg.weights")


def save_pretrained(
    model: UNet,
    folder: str | Path,
    metadata: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``folder``.

    Args:
        model: The model to save.
        folder: Output folder (created).
        metadata: Extra entries for ``config.json`` (training config, metrics, ...).
        dtype: Floating dtype to store (float16 halves the size; loading converts back to float32).

    Returns:
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        key: (value.to(dtype) if value.is_floating_point() else value).detach().cpu().contiguous()
        for key, value in model.state_dict().items()
    }
    config: dict[str, Any] = {
        "architecture": "UNet",
        **model.config,
        "task": task_of(model.num_classes),
        "class_names": list(class_names_for(model.num_classes)),
        "boundary_width_px": DEFAULT_BOUNDARY_WIDTH_PX,
        "input_size": [256, 256],
        "input_range": [0.0, 1.0],
        "format": "polypseg",
    }
    config.update(metadata or {})
    try:
        atomic_save(folder / WEIGHTS_NAME, lambda path: save_file(state, str(path), metadata={"format": "pt"}))
    except SafetensorError as error:  # e.g. the disk is full
        raise OSError(f"{folder / WEIGHTS_NAME}: cannot write weights ({' '.join(str(error).split())})") from None
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2, default=str) + "\n")
    return folder


def read_model_config(weights: WeightsLike = None) -> dict[str, Any]:
    """``config.json`` beside the weights as a dict (empty if none): :class:`~polypseg.weights.config.WeightsConfig`."""
    return dict(resolve(weights).config.raw)


def _check_shapes(
    shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], weights_path: Path, origin: str = ""
) -> None:
    for key, shape in expected.items():
        if key not in shapes:
            raise WeightsError(f"{weights_path}: tensor '{key}' is missing")
        if shapes[key] != shape:
            raise WeightsError(
                f"{weights_path}: tensor '{key}' has shape {shapes[key]}, the model{origin} needs {shape}"
            )
    extra = sorted(set(shapes) - set(expected))
    if extra:
        raise WeightsError(f"{weights_path}: tensor '{extra[0]}' does not belong to the model")


@dataclass
class WeightsInfo:
    """What was read off a weights file (:func:`inspect_weights`).

    Attributes:
        path: The ``.safetensors`` file.
        layout: ``"polypseg"`` (our tensor names with a ``config.json``) or ``"foreign"`` (mapped by structure).
        architecture: The :class:`~polypseg.model.UNet` arguments, ``decoder_concat`` included.
        concat_source: Where ``decoder_concat`` came from: ``"argument"``, ``"config.json"``, ``"default"``
            (a polypseg ``config.json`` older than the setting: always ``skip-up``) or ``"assumed"`` (no
            ``config.json`` says it; the tensors cannot).
        folded_biases: Convolution biases of the file followed by a BatchNorm, folded into its running mean.
        kept_biases: Biases of the file used as they are (upsamplers, classifier).
        zero_biases: Our bias tensors the file lacks, set to zero.
    """

    path: Path
    layout: str
    architecture: dict[str, Any]
    concat_source: str
    folded_biases: list[str]
    kept_biases: list[str]
    zero_biases: list[str]

    @property
    def task(self) -> str:
        """``"binary"`` (one output channel) or ``"multiclass"``."""
        return task_of(int(self.architecture["num_classes"]))


#: Files whose assumed concatenation order has been reported in this process (one line per file).
_ASSUMED_NOTICES: set[str] = set()


def load_pretrained(
    path: WeightsLike = None,
    map_location: str | torch.device = "cpu",
    decoder_concat: str | None = None,
) -> UNet:
    """Rebuild a U-Net with its weights, in eval mode.

    Args:
        path: A weights folder (``model.safetensors`` + ``config.json``), a ``.safetensors`` file, a
            training run folder (its ``best/``), ``hf://OWNER/REPO[@REVISION]`` on the Hugging Face Hub,
            ``None`` for the bundled model, or weights already resolved (:func:`polypseg.weights.resolve`).
        map_location: Device to load onto.
        decoder_concat: The decoder's concatenation order, ``"skip-up"`` (``cat([skip, upsampled])``) or
            ``"up-skip"``; ``None``: the one ``config.json`` records, else ``"skip-up"``, and a file without
            a ``config.json`` that says it gets one line on stderr (logger ``polypseg.weights``) naming the
            order assumed and how to choose the other.

    Raises:
        WeightsError: The file is missing, is not safetensors, or its tensors do not fit a U-Net.
        UsageError: ``decoder_concat`` is not one of the two orders.

    Example:
        >>> model = load_pretrained()  # the bundled model
        >>> model.num_classes
        3
    """
    model, info = _load(path, map_location, decoder_concat)
    if info.concat_source == "assumed" and str(info.path) not in _ASSUMED_NOTICES:
        _ASSUMED_NOTICES.add(str(info.path))
        logger.warning(
            "%s: no config.json says the decoder's concatenation order; assuming skip-up (cat([skip, upsampled])). "
            "If the checkpoint's code concatenates [upsampled, skip], pass --decoder-concat up-skip "
            '(Python: decoder_concat="up-skip"); `polypseg inspect WEIGHTS --data DIR` tells which fits',
            info.path,
        )
    return model


def inspect_weights(path: WeightsLike = None, decoder_concat: str | None = None) -> WeightsInfo:
    """Load weights (as :func:`load_pretrained` does) and say what was read off them.

    Example:
        >>> info = inspect_weights()  # the bundled model
        >>> info.task, info.architecture["decoder_concat"], info.layout
        ('multiclass', 'skip-up', 'polypseg')
    """
    return _load(path, "cpu", decoder_concat)[1]


def _load(path: WeightsLike, map_location: str | torch.device, decoder_concat: str | None) -> tuple[UNet, WeightsInfo]:
    if decoder_concat is not None and decoder_concat not in DECODER_CONCATS:
        raise UsageError(f"decoder_concat must be one of {', '.join(DECODER_CONCATS)}, got {decoder_concat!r}")
    weights = resolve(path)
    weights_path = weights.weights_file
    if not weights_path.exists():
        raise WeightsError(f"{weights_path}: weights file not found")
    try:  # the header alone: shapes are checked before any tensor is read or any model is built
        with safe_open(str(weights_path), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{weights_path}: not a readable safetensors file ({error})") from None
    config = weights.config
    architecture = {key: value for key, value in config.architecture.items() if key != "decoder_concat"}
    native = bool(architecture) and _is_native(shapes)
    if native:
        config_name = weights_path.parent / CONFIG_NAME
        _check_shapes(shapes, expected_shapes(architecture), weights_path, f" of {config_name}")
    try:
        tensors = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{weights_path}: not a readable safetensors file ({error})") from None
    notes: dict[str, list[str]] = {"folded": [], "kept": [], "zero": []}
    if native:
        notes["kept"] = sorted(key for key in tensors if key.endswith(".bias") and not _is_batchnorm(key, tensors))
    else:
        architecture, tensors, notes = map_foreign_state_dict_with_notes(tensors, source=weights_path)
        _check_shapes(
            {key: tuple(value.shape) for key, value in tensors.items()}, expected_shapes(architecture), weights_path
        )
    if decoder_concat is not None:
        source = "argument"
    elif config.decoder_concat is not None:
        source, decoder_concat = "config.json", config.decoder_concat
    else:
        source = "default" if config.raw.get("format") == "polypseg" else "assumed"
        decoder_concat = "skip-up"
    model = UNet(**architecture, decoder_concat=decoder_concat)
    expected = model.state_dict()
    model.load_state_dict({key: value.to(expected[key].dtype) for key, value in tensors.items()})
    info = WeightsInfo(
        weights_path,
        "polypseg" if native else "foreign",
        model.config,
        source,
        notes["folded"],
        notes["kept"],
        notes["zero"],
    )
    return model.to(map_location).eval(), info


def _is_batchnorm(bias_name: str, tensors: dict[str, Any]) -> bool:
    return f"{bias_name.rpartition('.')[0]}.running_mean" in tensors


def _is_native(tensors: dict[str, Any]) -> bool:
    return "classifier.weight" in tensors and "encoder.0.0.weight" in tensors
