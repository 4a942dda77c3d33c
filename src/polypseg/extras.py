"""The optional extras, imported here and only here, on first use.

The core of polypseg (train, evaluate, predict with PyTorch) needs none of them. Each extra's module is
imported by :func:`require` when a feature needs it; where it is not installed, a one-line
:class:`~polypseg.errors.MissingExtraError` says which feature needs it and the ``pip install`` that adds it.

| module | extra | for |
|---|---|---|
| ``onnx``, ``onnxruntime``, ``openvino``, ``nncf`` | ``fast`` | export, ``--backend onnxruntime|openvino``, int8 |
| ``gradio`` | ``demo`` | ``polypseg demo --web`` |
| ``av`` | ``video`` | video input and output |
"""

from __future__ import annotations

import importlib
from types import ModuleType

from polypseg.errors import MissingExtraError

__all__ = ["EXTRAS", "install_hint", "require"]

#: The optional module -> the extra of ``pyproject.toml`` that installs it.
EXTRAS = {"onnx": "fast", "onnxruntime": "fast", "openvino": "fast", "nncf": "fast", "gradio": "demo", "av": "video"}
#: The names the messages give the modules.
_SHOWN = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "nncf": "NNCF", "gradio": "Gradio", "av": "PyAV"}


def install_hint(module: str) -> str:
    """The ``pip install`` that adds ``module``'s extra.

    Example:
        >>> install_hint("av")
        "pip install 'polypseg[video]'"
    """
    return f"pip install 'polypseg[{EXTRAS[module]}]'"


def require(module: str, needed_for: str) -> ModuleType:
    """Import an optional extra's module (one of :data:`EXTRAS`).

    Args:
        module: The module's name, e.g. ``"openvino"``.
        needed_for: What needs it, for the message, e.g. ``"--backend openvino"``.

    Returns:
        The module.

    Raises:
        MissingExtraError: It is not installed (or does not import); the one-line message names
            ``needed_for``, the import error and :func:`install_hint`.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        shown = _SHOWN.get(module, module)
        raise MissingExtraError(f"{needed_for} needs {shown} ({error}): {install_hint(module)}") from None
