"""Weights on disk: ``model.safetensors`` + ``config.json`` in one folder, and loading them back.

* :func:`save_pretrained` writes our layout (atomically, file by file).
* :func:`load_pretrained` rebuilds a :class:`~polypseg.model.UNet` from such a folder, from a bare
  ``.safetensors`` file, from the bundled model (no argument), or from a checkpoint of the same
  architecture written by someone else with other tensor names (matched by structure, see
  :func:`map_foreign_state_dict`). Only safetensors are read: nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from polypseg.classes import CLASS_NAMES, DEFAULT_BOUNDARY_WIDTH_PX
from polypseg.config import CONFIG_NAME, WEIGHTS_NAME, WeightsError
from polypseg.files import atomic_save, atomic_write_text
from polypseg.model import UNet
from polypseg.weights.foreign import expected_shapes, map_foreign_state_dict
from polypseg.weights.reference import WeightsLike, resolve

__all__ = ["load_pretrained", "read_model_config", "save_pretrained"]


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
        "class_names": list(CLASS_NAMES),
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
    """The ``config.json`` beside the weights as a dict (empty if there is none); see :class:`WeightsConfig`."""
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


def load_pretrained(path: WeightsLike = None, map_location: str | torch.device = "cpu") -> UNet:
    """Rebuild a U-Net with its weights, in eval mode.

    Args:
        path: A weights folder (``model.safetensors`` + ``config.json``), a ``.safetensors`` file, a
            training run folder (its ``best/``), ``hf://OWNER/REPO[@REVISION]`` on the Hugging Face Hub,
            ``None`` for the bundled model, or weights already resolved (:func:`polypseg.weights.resolve`).
        map_location: Device to load onto.

    Raises:
        WeightsError: The file is missing, is not safetensors, or its tensors do not fit a U-Net.

    Example:
        >>> model = load_pretrained()  # the bundled model
        >>> model.num_classes
        3
    """
    weights = resolve(path)
    weights_path = weights.weights_file
    if not weights_path.exists():
        raise WeightsError(f"{weights_path}: weights file not found")
    try:  # the header alone: shapes are checked before any tensor is read or any model is built
        with safe_open(str(weights_path), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{weights_path}: not a readable safetensors file ({error})") from None
    architecture = weights.config.architecture
    native = bool(architecture) and _is_native(shapes)
    if native:
        config_name = weights_path.parent / CONFIG_NAME
        _check_shapes(shapes, expected_shapes(architecture), weights_path, f" of {config_name}")
    try:
        tensors = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{weights_path}: not a readable safetensors file ({error})") from None
    if not native:
        architecture, tensors = map_foreign_state_dict(tensors, source=weights_path)
        _check_shapes(
            {key: tuple(value.shape) for key, value in tensors.items()}, expected_shapes(architecture), weights_path
        )
    model = UNet(**architecture)
    expected = model.state_dict()
    model.load_state_dict({key: value.to(expected[key].dtype) for key, value in tensors.items()})
    return model.to(map_location).eval()


def _is_native(tensors: dict[str, Any]) -> bool:
    return "classifier.weight" in tensors and "encoder.0.0.weight" in tensors
