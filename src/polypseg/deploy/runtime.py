"""The runtime cache: run weights on any backend, exporting them once (cached) where the runtime needs it.

:func:`load_backend` is what ``Predictor.from_pretrained`` and ``--backend`` use; :func:`plan_auto_backend`
decides what ``--backend auto`` runs on this machine (:func:`polypseg.deploy.backends.choose_backend`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from polypseg.deploy.backends import (
    Backend,
    BackendChoice,
    OnnxRuntimeBackend,
    OpenVINOBackend,
    TorchBackend,
    choose_backend,
    installed_backends,
)
from polypseg.deploy.export import export_model
from polypseg.errors import UsageError
from polypseg.hardware import auto_precision, cpu_supports_bf16, native_bf16_evidence
from polypseg.weights import Weights, WeightsLike, load_pretrained, resolve

__all__ = ["CachedExport", "export_cache_dir", "load_backend", "plan_auto_backend"]

logger = logging.getLogger(__name__)


def export_cache_dir() -> Path:
    """Where :func:`load_backend` keeps exports: ``$POLYPSEG_CACHE/exports`` (default ``~/.cache/polypseg``)."""
    return Path(os.environ.get("POLYPSEG_CACHE", Path.home() / ".cache" / "polypseg")) / "exports"


def _is_export(folder: Path) -> bool:
    return (folder / "model.onnx").exists() or (folder / "model.xml").exists()


@dataclass(frozen=True)
class CachedExport:
    """An export :func:`load_backend` uses for a runtime.

    ``path`` is its folder; ``seconds`` how long making it took, or ``None`` where an earlier export was reused.
    """

    path: Path
    fmt: str
    seconds: float | None = None

    def __str__(self) -> str:
        return f"exported the model for {self.fmt} in {self.seconds:.1f} s (cached in {self.path})"


def _cache_target(weights: Weights, fmt: str, decoder_concat: str | None = None) -> Path:
    """The export cache folder for these weights (by file content), decoder concatenation order and format."""
    digest = hashlib.sha256(weights.weights_file.read_bytes()).hexdigest()[:20]
    # The order is part of the graph, not of the weights: an up-skip export has its own cache entry.
    concat = decoder_concat or weights.config.decoder_concat or "skip-up"
    return export_cache_dir() / (f"{digest}-{fmt}" if concat == "skip-up" else f"{digest}-{concat}-{fmt}")


def _cached_export(weights: Weights, fmt: str, decoder_concat: str | None = None) -> CachedExport:
    """Export once per weights file content, decoder concatenation order and format; later calls reuse the folder."""
    target = _cache_target(weights, fmt, decoder_concat)
    if _is_export(target):
        return CachedExport(target, fmt)
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as scratch:
        export_model(weights, fmt, Path(scratch) / "out", decoder_concat=decoder_concat)
        try:
            os.replace(Path(scratch) / "out", target)
        except OSError:  # another process finished the same export first
            if not _is_export(target):
                raise
    made = CachedExport(target, fmt, time.perf_counter() - start)
    logger.info("%s", made)
    return made


def plan_auto_backend(
    weights: WeightsLike = None, precision: str = "auto", images: int | None = None, decoder_concat: str | None = None
) -> BackendChoice:
    """What ``--backend auto`` runs for these weights here (:func:`~polypseg.deploy.backends.choose_backend`).

    The runtimes offered are the installed ones that can run the weights: an export folder excludes PyTorch
    (and ONNX Runtime where it holds no ``model.onnx``); an OpenVINO export with ``model_int8.xml`` offers
    int8. The model's width comes from its ``config.json``. ``images`` (how many are about to be segmented;
    ``None``: unknown) and whether an OpenVINO export is already cached decide whether a first export pays.
    """
    weights = resolve(weights)
    folder, exported = weights.folder, weights.is_export
    installed = installed_backends()
    if exported:
        installed = [name for name in installed if name != "torch"]
        if not (folder / "model.onnx").exists():
            installed = [name for name in installed if name != "onnxruntime"]
    return choose_backend(
        installed,
        native_bf16=cpu_supports_bf16(),
        has_int8_export=exported and (folder / "model_int8.xml").exists(),
        base_channels=weights.config.base_channels,
        precision=precision,
        bf16_evidence=native_bf16_evidence(),
        images=images,
        export_ready=exported or _is_export(_cache_target(weights, "openvino", decoder_concat)),
    )


def load_backend(
    weights: WeightsLike = None,
    backend: str = "torch",
    precision: str = "auto",
    images: int | None = None,
    decoder_concat: str | None = None,
) -> Backend:
    """Build an inference backend for weights, exporting (once, cached) when the runtime needs it.

    The backend returned carries what was decided on the way, for callers that report it (``predict``):
    ``backend.auto_choice`` (the :class:`~polypseg.deploy.backends.BackendChoice` of ``auto``, else ``None``) and
    ``backend.export`` (the :class:`CachedExport` used, with its ``seconds`` where this call made it, else
    ``None``). Both are also logged (``logging``, logger ``polypseg.export``, level INFO).

    Args:
        weights: Weights (folder, file, run folder, ``hf://``; ``None``: bundled) or an export folder
            written by :func:`export_model` (``model.onnx`` / ``model.xml`` / ``model_int8.xml``).
        backend: ``"torch"``, ``"onnxruntime"``, ``"openvino"``, or ``"auto"``: the runtime and precision
            that measured fastest on CPUs like this one (:func:`plan_auto_backend`: OpenVINO int8 for an
            int8 export, else bf16 where the CPU computes it natively, else fp32).
        precision: ``"auto"`` (bf16 where the CPU computes it natively, else fp32), ``"32"``, ``"bf16"``
            (torch, openvino) or ``"int8"`` (openvino, from an export made with ``--int8``).
        images: For ``auto``: how many images are about to be segmented (``None``: unknown or many); with
            few images and no export made yet, a first export is not worth it (see
            :func:`~polypseg.deploy.backends.choose_backend`).
        decoder_concat: The decoder's concatenation order for weights whose ``config.json`` does not say
            it (see :func:`polypseg.load_pretrained`); an export folder has it built in and refuses another.

    Raises:
        UsageError: An unknown backend or a precision the backend does not offer.
    """
    weights = resolve(weights)
    choice = None
    if backend == "auto":
        choice = plan_auto_backend(weights, precision, images, decoder_concat)
        backend, precision = choice.backend, choice.precision
        logger.info("backend auto: %s", choice)
    if backend not in ("torch", "onnxruntime", "openvino"):
        raise UsageError(f"backend must be auto, torch, onnxruntime or openvino, got {backend!r}")
    folder, exported = weights.folder, weights.is_export
    made: CachedExport | None = None
    if exported and decoder_concat is not None:
        built = weights.config.decoder_concat or "skip-up"
        if built != decoder_concat:
            raise UsageError(
                f"{folder}: an export with the decoder order {built} built in; --decoder-concat cannot change it"
            )
    if backend == "torch":
        if exported:
            raise UsageError(f"{folder}: an export folder; use --backend onnxruntime or openvino with it")
        loaded: Backend = TorchBackend(load_pretrained(weights, decoder_concat=decoder_concat), precision)
    else:
        if precision == "int8" and not (backend == "openvino" and (folder / "model_int8.xml").exists()):
            raise UsageError(
                "int8 needs an OpenVINO export made with `polypseg export --format openvino --int8`; "
                "pass that folder as --weights with --backend openvino"
            )
        if exported:
            source = folder
        else:
            made = _cached_export(weights, "openvino" if backend == "openvino" else "onnx", decoder_concat)
            source = made.path
        if backend == "onnxruntime":
            if precision not in ("auto", "32"):
                raise UsageError(f"onnxruntime runs fp32 only, got precision {precision!r}")
            loaded = OnnxRuntimeBackend(source)
        else:
            if precision == "auto":
                precision = auto_precision("cpu")
            loaded = OpenVINOBackend(source, precision)
    loaded.auto_choice = choice  # type: ignore[attr-defined]
    loaded.export = made  # type: ignore[attr-defined]
    return loaded
