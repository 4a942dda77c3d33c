"""Weights: the folder format (``model.safetensors`` + ``config.json``), foreign checkpoints, ``hf://`` downloads.

A weights reference is resolved once (:func:`resolve`) into a :class:`Weights` (local path, typed
``config.json``, origin) that is passed down; :func:`load_pretrained` builds the U-Net from it.

* :mod:`~polypseg.weights.config`: :class:`WeightsConfig` (``config.json``, typed and checked), the file names.
* :mod:`~polypseg.weights.format`: :func:`save_pretrained`, :func:`load_pretrained`, :func:`inspect_weights`
  (task, width, biases, the decoder's concatenation order and where it came from).
* :mod:`~polypseg.weights.foreign`: :func:`map_foreign_state_dict` (other tensor names, same architecture).
* :mod:`~polypseg.weights.hub`: :func:`download_weights` (``hf://`` into the Hugging Face cache).
* :mod:`~polypseg.weights.reference`: :func:`resolve`, :class:`Weights`, the bundled model and examples.
"""

from polypseg.errors import WeightsError
from polypseg.weights.config import CONFIG_NAME, WEIGHTS_NAME, WeightsConfig
from polypseg.weights.foreign import map_foreign_state_dict
from polypseg.weights.format import WeightsInfo, inspect_weights, load_pretrained, read_model_config, save_pretrained
from polypseg.weights.hub import HUB_PREFIX, download_weights, parse_hub_reference
from polypseg.weights.reference import (
    Weights,
    WeightsLike,
    bundled_examples_dir,
    bundled_weights_dir,
    resolve,
    resolve_weights,
)

__all__ = [
    "CONFIG_NAME",
    "HUB_PREFIX",
    "WEIGHTS_NAME",
    "Weights",
    "WeightsConfig",
    "WeightsError",
    "WeightsInfo",
    "WeightsLike",
    "bundled_examples_dir",
    "bundled_weights_dir",
    "download_weights",
    "inspect_weights",
    "load_pretrained",
    "map_foreign_state_dict",
    "parse_hub_reference",
    "read_model_config",
    "resolve",
    "resolve_weights",
    "save_pretrained",
]
