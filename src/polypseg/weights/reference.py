"""A weights reference, resolved once: :func:`resolve` turns what a user gives into a :class:`Weights`.

A reference is ``None`` (the bundled model), a weights folder, a ``.safetensors`` file, a training run
folder (its ``best/``), ``hf://OWNER/REPO[@REVISION][/PATH]`` (downloaded once into the Hugging Face
cache) or an export folder of :mod:`polypseg.deploy`. The :class:`Weights` it resolves to carries the
local path, the checked and typed ``config.json`` and where it came from; every function that takes
weights accepts either, and a :class:`Weights` passed down is never resolved again.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from polypseg.weights.config import CONFIG_NAME, WEIGHTS_NAME, WeightsConfig
from polypseg.weights.hub import HUB_PREFIX, download_weights

__all__ = ["Weights", "WeightsLike", "bundled_examples_dir", "bundled_weights_dir", "resolve", "resolve_weights"]


def bundled_weights_dir() -> Path:
    """Folder of the model that ships with polypseg (a small U-Net trained on Kvasir-SEG)."""
    return Path(str(resources.files("polypseg") / "assets" / "model"))


def bundled_examples_dir() -> Path:
    """Folder of the example images that ship with polypseg (from the Kvasir-SEG test split)."""
    return Path(str(resources.files("polypseg") / "assets" / "examples"))


@dataclass(frozen=True)
class Weights:
    """Resolved weights: where they are, their ``config.json`` and what the user named.

    Attributes:
        path: The weights folder, or a ``.safetensors`` file.
        config: The checked ``config.json`` beside them (empty where there is none).
        origin: The reference as given (``"bundled"`` for ``None``).
    """

    path: Path
    config: WeightsConfig
    origin: str

    @property
    def folder(self) -> Path:
        """The folder holding the weights (and ``config.json``, export files, ``splits.json`` of a Hub repo)."""
        return self.path if self.path.is_dir() else self.path.parent

    @property
    def weights_file(self) -> Path:
        """``model.safetensors`` (or the named ``.safetensors`` file)."""
        return self.path / WEIGHTS_NAME if self.path.is_dir() else self.path

    @property
    def is_export(self) -> bool:
        """An export folder (ONNX / OpenVINO files) without PyTorch weights."""
        folder = self.folder
        exported = (folder / "model.onnx").exists() or (folder / "model.xml").exists()
        return exported and not (folder / WEIGHTS_NAME).exists()

    def __str__(self) -> str:
        return str(self.path)


#: What every function that takes weights accepts.
WeightsLike = Weights | str | Path | None


def resolve_weights(reference: WeightsLike) -> Path:
    """The local path of a reference (see :func:`resolve`), without reading ``config.json``."""
    if isinstance(reference, Weights):
        return reference.path
    if reference is None:
        return bundled_weights_dir()
    if isinstance(reference, str) and reference.startswith(HUB_PREFIX):
        return download_weights(reference)
    path = Path(reference)
    if path.is_dir() and not (path / WEIGHTS_NAME).exists() and (path / "best" / WEIGHTS_NAME).exists():
        return path / "best"
    return path


def resolve(reference: WeightsLike) -> Weights:
    """Resolve a weights reference once: local path (downloading ``hf://``), checked ``config.json``, origin.

    A :class:`Weights` is returned as it is.

    Raises:
        WeightsError: ``config.json`` is not valid (named), or an ``hf://`` reference cannot be fetched.

    Example:
        >>> weights = resolve(None)
        >>> weights.origin, weights.config.input_size
        ('bundled', 256)
    """
    if isinstance(reference, Weights):
        return reference
    path = resolve_weights(reference)
    folder = path if path.is_dir() else path.parent
    return Weights(path, WeightsConfig.read(folder / CONFIG_NAME), "bundled" if reference is None else str(reference))
