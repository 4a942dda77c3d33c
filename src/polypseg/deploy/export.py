"""Export a trained U-Net to ONNX or OpenVINO (optionally int8).

``export_model(weights, "onnx", out)`` writes ``out/model.onnx`` (dynamic batch, height and width) and
``out/config.json`` (classes, input size and range: the normalisation travels with the model).
``"openvino"`` writes ``model.xml``/``model.bin`` (fp32 weights), and with calibration images also
``model_int8.xml``/``.bin``, quantised post-training with NNCF (:func:`quantize_int8`). ``polypseg
export`` then checks every written model against PyTorch through the Predictor
(:func:`polypseg.evaluation.parity.export_parity`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polypseg.classes import class_names_for, task_of
from polypseg.errors import MissingExtraError, UsageError
from polypseg.extras import install_hint, require
from polypseg.files import atomic_write_text
from polypseg.images import network_input, read_image
from polypseg.model import UNet
from polypseg.weights import WeightsLike, load_pretrained, resolve
from polypseg.weights.config import CONFIG_NAME

__all__ = ["FORMATS", "INT8_OPTIONS", "ExportReport", "export_model", "export_onnx", "quantize_int8"]

FORMATS = ("onnx", "openvino")

#: Options of ``nncf.quantize`` for the int8 export, recorded in the export's ``config.json``.
#: Full (not fast) bias correction measures each layer's output shift with the layers before it already
#: quantised and corrects the bias, so shifts do not pile up through the network: for the bundled model
#: on the 100 Kvasir-SEG test images, int8 class maps agree with PyTorch fp32 on 99.77% of pixels
#: (fast bias correction: 99.01%) at the same int8 speed; quantising takes ~3x longer.
INT8_OPTIONS: dict[str, Any] = {"preset": "mixed", "fast_bias_correction": False}


@dataclass
class ExportReport:
    """What :func:`export_model` wrote."""

    files: list[Path] = field(default_factory=list)


def _network_input(paths: Sequence[str | Path], image_size: int) -> np.ndarray:
    return network_input([read_image(path) for path in paths], image_size)


def export_onnx(model: UNet, path: str | Path, image_size: int = 256) -> Path:
    """Write ``model`` as ONNX with dynamic batch, height and width (multiples of 16), atomically."""
    path = Path(path)
    model = model.float().eval().to(memory_format=torch.contiguous_format)
    example = torch.rand(1, model.in_channels, image_size, image_size)
    height = torch.export.Dim("height_16", min=1, max=1024)
    width = torch.export.Dim("width_16", min=1, max=1024)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=1024), 2: 16 * height, 3: 16 * width}}
    try:
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=dynamic,
            verbose=False,
        )
    except ImportError as error:  # torch's ONNX exporter imports onnx and onnxscript
        raise MissingExtraError(f"ONNX export needs onnx and onnxscript ({error}): {install_hint('onnx')}") from None
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as scratch:
        temporary = Path(scratch) / path.name
        program.save(str(temporary))
        onnx = require("onnx", "ONNX export")
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
    nncf = require("nncf", "int8 export")
    dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    return nncf.quantize(
        model,
        dataset,
        subset_size=len(calibration),
        preset=nncf.QuantizationPreset(INT8_OPTIONS["preset"]),
        fast_bias_correction=INT8_OPTIONS["fast_bias_correction"],
    )


def _export_openvino(onnx_path: Path, out_dir: Path, calibration: np.ndarray | None) -> list[Path]:
    ov = require("openvino", "OpenVINO export")
    model = ov.convert_model(str(onnx_path))
    written = [out_dir / "model.xml", out_dir / "model.bin"]
    ov.save_model(model, str(written[0]), compress_to_fp16=False)
    if calibration is not None:
        ov.save_model(quantize_int8(model, calibration), str(out_dir / "model_int8.xml"), compress_to_fp16=False)
        written += [out_dir / "model_int8.xml", out_dir / "model_int8.bin"]
    return written


def export_model(
    weights: WeightsLike,
    fmt: str,
    out_dir: str | Path,
    calibration_images: Sequence[str | Path] = (),
    overwrite: bool = False,
    decoder_concat: str | None = None,
) -> ExportReport:
    """Export weights to ``fmt`` ("onnx" or "openvino") in ``out_dir``.

    :func:`polypseg.evaluation.parity.export_parity` then runs what was written beside PyTorch.

    Args:
        weights: Weights folder/file/run folder, or ``None`` for the bundled model.
        fmt: ``"onnx"`` or ``"openvino"`` (the latter also writes the ONNX file it converts from).
        out_dir: Output folder; must not hold an export already unless ``overwrite``.
        calibration_images: Images for int8 post-training quantisation (OpenVINO only; empty: no int8).
        overwrite: Replace an existing export.
        decoder_concat: The decoder's concatenation order for weights whose ``config.json`` does not
            say it (see :func:`polypseg.load_pretrained`); the export's ``config.json`` records it.

    Returns:
        The files written.
    """
    if fmt not in FORMATS:
        raise UsageError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out_dir = Path(out_dir)
    if (out_dir / "model.onnx").exists() and not overwrite:
        raise FileExistsError(f"{out_dir}: holds an export already; pass --overwrite to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = resolve(weights)
    model = load_pretrained(weights, decoder_concat=decoder_concat)
    config = {
        "architecture": "UNet",
        **weights.config.raw,
        **model.config,
        "task": task_of(model.num_classes),
        "class_names": list(class_names_for(model.num_classes)),
    }
    image_size = weights.config.input_size

    report = ExportReport()
    report.files.append(export_onnx(model, out_dir / "model.onnx", image_size))
    calibration = _network_input(calibration_images, image_size) if calibration_images and fmt == "openvino" else None
    if fmt == "openvino":
        report.files += _export_openvino(out_dir / "model.onnx", out_dir, calibration)
    exported = {
        **config,
        "export": {
            "format": fmt,
            "input": "images (B, 3, H, W) float32 RGB in [0, 1], H and W multiples of 16",
            "output": "logits (B, classes, H, W)"
            + (
                f"; one channel: sigmoid >= threshold ({weights.config.threshold:g}) is polyp"
                if model.num_classes == 1
                else ""
            ),
            "int8": calibration is not None,
        },
    }
    if calibration is not None:
        exported["export"]["int8_options"] = {**INT8_OPTIONS, "calibration_images": len(calibration)}
    atomic_write_text(out_dir / CONFIG_NAME, json.dumps(exported, indent=2, default=str) + "\n")
    report.files.append(out_dir / CONFIG_NAME)
    return report
