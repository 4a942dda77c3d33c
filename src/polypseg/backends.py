"""Inference backends: one call, ``backend(images) -> logits``, for PyTorch, ONNX Runtime and OpenVINO.

Every backend takes a float32 array (B, 3, H, W) in [0, 1] (H, W multiples of 16) and returns float32
logits (B, num_classes, H, W) as numpy. Heavy runtimes are optional and imported only when used.

=================  ===================================================================================
name               what runs
=================  ===================================================================================
``torch``          the PyTorch model, channels_last; precision ``32`` or ``bf16`` (autocast)
``onnxruntime``    an exported ``model.onnx`` on ONNX Runtime's CPU provider (fp32)
``openvino``       an exported OpenVINO IR (or ONNX) compiled for CPU; precision ``32``, ``bf16``
                   (inference precision hint; only fast where the CPU has native bf16) or ``int8``
                   (an NNCF-quantised IR, see :func:`polypseg.export.export_model`)
=================  ===================================================================================
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from polypseg.hardware import cpu_supports_bf16
from polypseg.model import UNet

__all__ = [
    "BACKENDS",
    "Backend",
    "OnnxRuntimeBackend",
    "OpenVINOBackend",
    "TorchBackend",
    "installed_backends",
]

BACKENDS = ("torch", "onnxruntime", "openvino")


class Backend(Protocol):
    """Maps images (B, 3, H, W) float32 in [0, 1] to logits (B, C, H, W) float32."""

    name: str
    precision: str

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Run the network on a batch."""
        ...


def installed_backends() -> list[str]:
    """The backends whose runtime is importable here, fastest fp32 first.

    Order from ``polypseg benchmark`` on a 2-core AVX-512 CPU: for the small bundled model (width 16)
    ONNX Runtime fp32 ran 1.2-1.5x PyTorch eager fp32 and OpenVINO fp32 0.75-1.1x (for width 64 OpenVINO
    was ahead, 1.9x vs 1.5x). OpenVINO int8 is faster still but needs an explicit ``--int8`` export, so
    ``auto`` never picks it.
    """
    found = [
        name
        for name, module in (("onnxruntime", "onnxruntime"), ("openvino", "openvino"))
        if importlib.util.find_spec(module) is not None
    ]
    return [*found, "torch"]


class TorchBackend:
    """The PyTorch model (channels_last), fp32 or bf16 autocast.

    Args:
        model: The U-Net.
        precision: ``"32"``, ``"bf16"`` or ``"auto"`` (bf16 where computed natively, else 32).
        device: Torch device.
    """

    name = "torch"

    def __init__(self, model: UNet, precision: str = "auto", device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        if precision == "auto":
            native = torch.cuda.is_bf16_supported() if self.device.type == "cuda" else cpu_supports_bf16()
            precision = "bf16" if native else "32"
        if precision not in ("32", "bf16"):
            raise ValueError(f"torch backend precision must be auto, 32 or bf16, got {precision!r}")
        self.precision = precision
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(images).to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits = self.model(tensor)
        return logits.float().cpu().numpy()


class OnnxRuntimeBackend:
    """An ONNX file on ONNX Runtime's CPU execution provider.

    Args:
        path: ``model.onnx`` or a folder holding it.
        threads: Intra-op threads (0: ONNX Runtime's default, one per core).
    """

    name = "onnxruntime"
    precision = "32"

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        import onnxruntime as ort

        path = Path(path)
        path = path / "model.onnx" if path.is_dir() else path
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})[0]


class OpenVINOBackend:
    """An OpenVINO IR (``model.xml``) or ONNX file compiled for the CPU.

    Args:
        path: ``model.xml`` / ``model_int8.xml`` / ``model.onnx``, or a folder (``precision`` picks the file).
        precision: ``"32"``, ``"bf16"`` (inference precision hint) or ``"int8"`` (the quantised IR).
        latency: Optimise for one request at a time (batch 1) rather than throughput.
    """

    name = "openvino"

    def __init__(self, path: str | Path, precision: str = "32", latency: bool = True) -> None:
        import openvino as ov

        if precision not in ("32", "bf16", "int8"):
            raise ValueError(f"openvino precision must be 32, bf16 or int8, got {precision!r}")
        path = Path(path)
        if path.is_dir():
            candidates = ["model_int8.xml"] if precision == "int8" else ["model.xml", "model.onnx"]
            found = [path / name for name in candidates if (path / name).exists()]
            if not found:
                raise FileNotFoundError(f"{path}: no {' or '.join(candidates)} (run polypseg export first)")
            path = found[0]
        self.precision = precision
        config = {
            "PERFORMANCE_HINT": "LATENCY" if latency else "THROUGHPUT",
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: np.ascontiguousarray(images, dtype=np.float32)})
        return np.asarray(result[self.compiled.output(0)], dtype=np.float32)
