"""Export a trained U-Net to ONNX or OpenVINO, with a parity check against PyTorch.

``export_model(weights, "onnx", out)`` writes ``out/model.onnx`` (dynamic batch, height and width) and
``out/config.json`` (classes, input size and range: the normalisation travels with the model).
``"openvino"`` writes ``model.xml``/``model.bin`` (fp32 weights), and with calibration images also
``model_int8.xml``/``.bin``, quantised post-training with NNCF (:func:`quantize_int8`).
After export, every written model is run beside PyTorch fp32 on real images: the maximum absolute
logit difference and the share of pixels whose class (argmax) agrees are returned and printed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polypseg.backends import (
    Backend,
    BackendChoice,
    OnnxRuntimeBackend,
    OpenVINOBackend,
    TorchBackend,
    choose_backend,
    installed_backends,
)
from polypseg.classes import class_names_for, logits_to_classes, task_of
from polypseg.data import resize_image
from polypseg.hardware import cpu_supports_bf16, native_bf16_evidence
from polypseg.io import atomic_write_text, read_image
from polypseg.model import UNet
from polypseg.weights import CONFIG_NAME, WEIGHTS_NAME, load_pretrained, read_model_config, resolve_weights

__all__ = [
    "CachedExport",
    "ExportReport",
    "INT8_OPTIONS",
    "Parity",
    "calibration_paths",
    "export_cache_dir",
    "export_model",
    "export_onnx",
    "images_for",
    "load_backend",
    "plan_auto_backend",
    "parity",
    "quantize_int8",
]

FORMATS = ("onnx", "openvino")

logger = logging.getLogger(__name__)

#: Options of ``nncf.quantize`` for the int8 export, recorded in the export's ``config.json``.
#: Full (not fast) bias correction measures each layer's output shift with the layers before it already
#: quantised and corrects the bias, so shifts do not pile up through the network: for the bundled model
#: on the 100 Kvasir-SEG test images, int8 class maps agree with PyTorch fp32 on 99.77% of pixels
#: (fast bias correction: 99.01%) at the same int8 speed; quantising takes ~3x longer.
INT8_OPTIONS: dict[str, Any] = {"preset": "mixed", "fast_bias_correction": False}


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


@dataclass
class ExportReport:
    """What :func:`export_model` wrote and how well it agrees with PyTorch."""

    files: list[Path] = field(default_factory=list)
    parity: list[Parity] = field(default_factory=list)


def images_for(paths: Sequence[str | Path], image_size: int) -> np.ndarray:
    """Read and resize images as the Predictor does: float32 (N, 3, S, S) in [0, 1]."""
    arrays = [resize_image(read_image(path), (image_size, image_size)) for path in paths]
    return np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def parity(reference: Backend, candidate: Backend, images: np.ndarray, name: str, batch_size: int = 4) -> Parity:
    """Compare two backends' logits and class maps on ``images`` (N, 3, H, W).

    Class maps are :func:`polypseg.classes.logits_to_classes` of the logits: the argmax, or for a binary
    model (one channel) the sigmoid at the default threshold.
    """
    worst, agree, total = 0.0, 0, 0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        expected, actual = reference(batch), candidate(batch)
        worst = max(worst, float(np.abs(expected - actual).max()))
        expected_classes = logits_to_classes(torch.from_numpy(np.asarray(expected)))
        agree += int((expected_classes == logits_to_classes(torch.from_numpy(np.asarray(actual)))).sum())
        total += expected.shape[0] * expected.shape[2] * expected.shape[3]
    return Parity(name, worst, agree / max(total, 1))


def export_onnx(model: UNet, path: str | Path, image_size: int = 256) -> Path:
    """Write ``model`` as ONNX with dynamic batch, height and width (multiples of 16), atomically."""
    path = Path(path)
    model = model.float().eval().to(memory_format=torch.contiguous_format)
    example = torch.rand(1, model.in_channels, image_size, image_size)
    height = torch.export.Dim("height_16", min=1, max=1024)
    width = torch.export.Dim("width_16", min=1, max=1024)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=1024), 2: 16 * height, 3: 16 * width}}
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=dynamic,
        verbose=False,
    )
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as scratch:
        temporary = Path(scratch) / path.name
        program.save(str(temporary))
        import onnx

        # Store weights inside the one file (small models) so the file can be moved on its own.
        onnx.save_model(onnx.load(str(temporary)), str(path), save_as_external_data=False)
    return path


def quantize_int8(model: Any, calibration: np.ndarray) -> Any:
    """Quantise an OpenVINO model to int8 with NNCF post-training quantisation and :data:`INT8_OPTIONS`.

    Args:
        model: An ``openvino.Model`` (fp32).
        calibration: Calibration images, float32 (N, 3, H, W) in [0, 1], fed one at a time; all N are used.

    Returns:
        The quantised ``openvino.Model``.
    """
    import nncf

    dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    return nncf.quantize(
        model,
        dataset,
        subset_size=len(calibration),
        preset=nncf.QuantizationPreset(INT8_OPTIONS["preset"]),
        fast_bias_correction=INT8_OPTIONS["fast_bias_correction"],
    )


def _export_openvino(onnx_path: Path, out_dir: Path, calibration: np.ndarray | None) -> list[Path]:
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    written = [out_dir / "model.xml", out_dir / "model.bin"]
    ov.save_model(model, str(written[0]), compress_to_fp16=False)
    if calibration is not None:
        ov.save_model(quantize_int8(model, calibration), str(out_dir / "model_int8.xml"), compress_to_fp16=False)
        written += [out_dir / "model_int8.xml", out_dir / "model_int8.bin"]
    return written


def export_model(
    weights: str | Path | None,
    fmt: str,
    out_dir: str | Path,
    parity_images: Sequence[str | Path] = (),
    calibration_images: Sequence[str | Path] = (),
    overwrite: bool = False,
    check_parity: bool = True,
    decoder_concat: str | None = None,
) -> ExportReport:
    """Export weights to ``fmt`` ("onnx" or "openvino") in ``out_dir`` and check parity.

    Args:
        weights: Weights folder/file/run folder, or ``None`` for the bundled model.
        fmt: ``"onnx"`` or ``"openvino"`` (the latter also writes the ONNX file it converts from).
        out_dir: Output folder; must not hold an export already unless ``overwrite``.
        parity_images: Real images for the parity check (default: the bundled examples).
        calibration_images: Images for int8 post-training quantisation (OpenVINO only; empty: no int8).
        overwrite: Replace an existing export.
        check_parity: Run the exported models beside PyTorch on the parity images.
        decoder_concat: The decoder's concatenation order for weights whose ``config.json`` does not
            say it (see :func:`polypseg.load_pretrained`); the export's ``config.json`` records it.

    Returns:
        The files written and the parity of each exported model with PyTorch fp32.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out_dir = Path(out_dir)
    if (out_dir / "model.onnx").exists() and not overwrite:
        raise FileExistsError(f"{out_dir}: holds an export already; pass --overwrite to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_pretrained(weights, decoder_concat=decoder_concat)
    config = {
        "architecture": "UNet",
        **read_model_config(weights),
        **model.config,
        "task": task_of(model.num_classes),
        "class_names": list(class_names_for(model.num_classes)),
    }
    image_size = int(config.get("input_size", [256, 256])[0])

    report = ExportReport()
    report.files.append(export_onnx(model, out_dir / "model.onnx", image_size))
    calibration = images_for(calibration_images, image_size) if calibration_images and fmt == "openvino" else None
    if fmt == "openvino":
        report.files += _export_openvino(out_dir / "model.onnx", out_dir, calibration)
    exported = {
        **config,
        "export": {
            "format": fmt,
            "input": "images (B, 3, H, W) float32 RGB in [0, 1], H and W multiples of 16",
            "output": "logits (B, classes, H, W)"
            + ("; one channel: sigmoid >= threshold (0.5) is polyp" if model.num_classes == 1 else ""),
            "int8": calibration is not None,
        },
    }
    if calibration is not None:
        exported["export"]["int8_options"] = {**INT8_OPTIONS, "calibration_images": len(calibration)}
    atomic_write_text(out_dir / CONFIG_NAME, json.dumps(exported, indent=2, default=str) + "\n")
    report.files.append(out_dir / CONFIG_NAME)
    if not check_parity:
        return report
    if not parity_images:
        from polypseg.weights import bundled_examples_dir

        parity_images = sorted(bundled_examples_dir().glob("*.jpg"))
    images = images_for(parity_images, image_size)
    reference = TorchBackend(model, precision="32")
    report.parity.append(parity(reference, OnnxRuntimeBackend(out_dir / "model.onnx"), images, "onnxruntime fp32"))
    if fmt == "openvino":
        report.parity.append(parity(reference, OpenVINOBackend(out_dir, "32"), images, "openvino fp32"))
        if calibration is not None:
            report.parity.append(parity(reference, OpenVINOBackend(out_dir, "int8"), images, "openvino int8"))
    return report


def calibration_paths(
    folder: str | Path | None, data_dir: str | Path, weights: str | Path | None, count: int = 100
) -> list[Path]:
    """Images for int8 calibration: up to ``count`` from ``folder``, else from the training split of ``data_dir``.

    The training split is the one the weights were trained with (see
    :func:`polypseg.evaluation.resolve_split`), so calibration never sees validation or test images.
    """
    if folder is not None:
        from polypseg.inference import expand_inputs

        paths, _ = expand_inputs([folder])
    else:
        from polypseg.data import find_pairs
        from polypseg.evaluation import resolve_split

        names, _ = resolve_split(weights, data_dir, "train", None)
        by_name = {sample.name: sample.image_path for sample in find_pairs(data_dir)}
        paths = [by_name[name] for name in names]
    if not paths:
        raise ValueError(f"{folder or data_dir}: no calibration images")
    step = max(len(paths) // count, 1)
    return paths[::step][:count]


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


def _cache_target(weights: str | Path | None, fmt: str, decoder_concat: str | None = None) -> Path:
    """The export cache folder for these weights (by file content), decoder concatenation order and format."""
    resolved = resolve_weights(weights)
    weights_file = resolved / WEIGHTS_NAME if resolved.is_dir() else resolved
    digest = hashlib.sha256(weights_file.read_bytes()).hexdigest()[:20]
    # The order is part of the graph, not of the weights: an up-skip export has its own cache entry.
    concat = decoder_concat or read_model_config(weights).get("decoder_concat", "skip-up")
    return export_cache_dir() / (f"{digest}-{fmt}" if concat == "skip-up" else f"{digest}-{concat}-{fmt}")


def _cached_export(weights: str | Path | None, fmt: str, decoder_concat: str | None = None) -> CachedExport:
    """Export once per weights file content, decoder concatenation order and format; later calls reuse the folder."""
    target = _cache_target(weights, fmt, decoder_concat)
    if _is_export(target):
        return CachedExport(target, fmt)
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as scratch:
        export_model(weights, fmt, Path(scratch) / "out", check_parity=False, decoder_concat=decoder_concat)
        try:
            os.replace(Path(scratch) / "out", target)
        except OSError:  # another process finished the same export first
            if not _is_export(target):
                raise
    made = CachedExport(target, fmt, time.perf_counter() - start)
    logger.info("%s", made)
    return made


def plan_auto_backend(
    weights: str | Path | None = None,
    precision: str = "auto",
    images: int | None = None,
    decoder_concat: str | None = None,
) -> BackendChoice:
    """What ``--backend auto`` runs for these weights on this machine (see :func:`~polypseg.backends.choose_backend`).

    The runtimes offered are the installed ones that can run the weights: an export folder excludes PyTorch
    (and ONNX Runtime where it holds no ``model.onnx``); an OpenVINO export with ``model_int8.xml`` offers
    int8. The model's width comes from its ``config.json``. ``images`` (how many are about to be segmented;
    ``None``: unknown) and whether an OpenVINO export is already cached decide whether a first export pays.
    """
    resolved = resolve_weights(weights)
    folder = resolved if resolved.is_dir() else resolved.parent
    exported = _is_export(folder) and not (folder / WEIGHTS_NAME).exists()
    installed = installed_backends()
    if exported:
        installed = [name for name in installed if name != "torch"]
        if not (folder / "model.onnx").exists():
            installed = [name for name in installed if name != "onnxruntime"]
    width = read_model_config(weights).get("base_channels")
    return choose_backend(
        installed,
        native_bf16=cpu_supports_bf16(),
        has_int8_export=exported and (folder / "model_int8.xml").exists(),
        base_channels=width if isinstance(width, int) else None,
        precision=precision,
        bf16_evidence=native_bf16_evidence(),
        images=images,
        export_ready=exported or _is_export(_cache_target(weights, "openvino", decoder_concat)),
    )


def load_backend(
    weights: str | Path | None = None,
    backend: str = "torch",
    precision: str = "auto",
    decoder_concat: str | None = None,
    images: int | None = None,
) -> Backend:
    """Build an inference backend for weights, exporting (once, cached) when the runtime needs it.

    The backend returned carries what was decided on the way, for callers that report it (``predict``):
    ``backend.auto_choice`` (the :class:`~polypseg.backends.BackendChoice` of ``auto``, else ``None``) and
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
        decoder_concat: The decoder's concatenation order for weights whose ``config.json`` does not say
            it (see :func:`polypseg.load_pretrained`); an export folder has it built in and refuses another.
        images: For ``auto``: how many images are about to be segmented (``None``: unknown or many); with
            few images and no export made yet, a first export is not worth it (see
            :func:`~polypseg.backends.choose_backend`).

    Raises:
        ValueError: An unknown backend or a precision the backend does not offer.
    """
    choice = None
    if backend == "auto":
        choice = plan_auto_backend(weights, precision, images, decoder_concat)
        backend, precision = choice.backend, choice.precision
        logger.info("backend auto: %s", choice)
    if backend not in ("torch", "onnxruntime", "openvino"):
        raise ValueError(f"backend must be auto, torch, onnxruntime or openvino, got {backend!r}")
    resolved = resolve_weights(weights)
    folder = resolved if resolved.is_dir() else resolved.parent
    exported = _is_export(folder) and not (folder / WEIGHTS_NAME).exists()
    made: CachedExport | None = None
    if exported and decoder_concat is not None:
        built = read_model_config(folder).get("decoder_concat", "skip-up")
        if built != decoder_concat:
            raise ValueError(
                f"{folder}: an export with the decoder order {built} built in; --decoder-concat cannot change it"
            )
    if backend == "torch":
        if exported:
            raise ValueError(f"{folder}: an export folder; use --backend onnxruntime or openvino with it")
        loaded: Backend = TorchBackend(load_pretrained(weights, decoder_concat=decoder_concat), precision)
    else:
        if precision == "int8" and not (backend == "openvino" and (folder / "model_int8.xml").exists()):
            raise ValueError(
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
                raise ValueError(f"onnxruntime runs fp32 only, got precision {precision!r}")
            loaded = OnnxRuntimeBackend(source)
        else:
            if precision == "auto":
                precision = "bf16" if cpu_supports_bf16() else "32"
            loaded = OpenVINOBackend(source, precision)
    loaded.auto_choice = choice  # type: ignore[attr-defined]
    loaded.export = made  # type: ignore[attr-defined]
    return loaded
