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
                   (an NNCF-quantised IR, see :func:`polypseg.deploy.export.export_model`)
=================  ===================================================================================

``auto`` (:func:`choose_backend`) picks the runtime and precision that measured fastest on CPUs like the
one it runs on; ``polypseg benchmark`` marks its pick and says whether it is within 10% of the fastest case.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch

from polypseg.errors import UsageError, WeightsError, one_line
from polypseg.extras import require
from polypseg.hardware import auto_precision
from polypseg.model import UNet

__all__ = [
    "BACKENDS",
    "SMALL_MODEL_CHANNELS",
    "Backend",
    "BackendChoice",
    "OnnxRuntimeBackend",
    "OpenVINOBackend",
    "TorchBackend",
    "choose_backend",
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
    """The backends whose runtime is importable here: ONNX Runtime, OpenVINO (where installed), then PyTorch.

    The order is not a speed ranking: ``auto`` decides with :func:`choose_backend`.
    """
    found = [
        name
        for name, module in (("onnxruntime", "onnxruntime"), ("openvino", "openvino"))
        if importlib.util.find_spec(module) is not None
    ]
    return [*found, "torch"]


#: Models this wide or narrower (``base_channels``) count as small for :func:`choose_backend`: without native
#: bf16, ONNX Runtime fp32 ran faster than OpenVINO fp32 for them, while OpenVINO fp32 led for the full
#: width-64 model. The measurements: README, "Export and fast CPU inference" (``polypseg benchmark``).
SMALL_MODEL_CHANNELS = 16

#: On a CPU with native bf16, a first OpenVINO export pays for itself over PyTorch bf16 only from about this
#: many images: the export's one-off cost divided by what it saves per image, both measured end to end by
#: ``scripts/first_use_speed.sh`` (README, "Export and fast CPU inference"). Below this count, and with no
#: export made yet, ``auto`` runs PyTorch bf16 and leaves OpenVINO for larger batches and later runs.
FIRST_EXPORT_MIN_IMAGES = 150


class BackendChoice(NamedTuple):
    """What ``--backend auto`` runs.

    ``backend`` and ``precision`` as :func:`polypseg.deploy.runtime.load_backend` takes them, and ``reason``, a short
    phrase for the one line ``predict`` prints about its choice.
    """

    backend: str
    precision: str
    reason: str

    def __str__(self) -> str:
        precision = "fp32" if self.precision == "32" else self.precision
        return f"{self.backend} {precision} ({self.reason})"


def choose_backend(
    installed: Sequence[str],
    native_bf16: bool,
    has_int8_export: bool = False,
    base_channels: int | None = None,
    precision: str = "auto",
    bf16_evidence: str | None = None,
    images: int | None = None,
    export_ready: bool = True,
) -> BackendChoice:
    """The fastest runtime and precision for ``--backend auto``, from what is installed and the CPU.

    A pure function of its arguments (:func:`polypseg.deploy.runtime.load_backend` passes
    :func:`installed_backends`, :func:`~polypseg.hardware.cpu_supports_bf16` and what the weights folder
    holds), so the rule can be tested for any CPU. With ``precision="auto"``, first that applies:

    1. OpenVINO int8 where the weights folder is an OpenVINO export with ``model_int8.xml``: int8 was the
       fastest case on every CPU measured.
    2. On a CPU with native bf16 (AVX512-BF16 or AMX): OpenVINO bf16, else PyTorch bf16 autocast (faster
       than ONNX Runtime fp32 there), else ONNX Runtime fp32. For small models (``base_channels`` at most
       :data:`SMALL_MODEL_CHANNELS`) PyTorch bf16 comes first.
    3. fp32 otherwise (without native support bf16 is emulated and several times slower than fp32):
       OpenVINO fp32, except for small models, where ONNX Runtime comes first; PyTorch fp32 where neither
       runtime is installed.

    The ranking comes from ``polypseg benchmark`` on CPUs with and without native bf16; the figures, the
    CPUs and the commands are in the README ("Export and fast CPU inference"), where they can be re-measured
    rather than quoted here.

    First use: where step 2 would take OpenVINO bf16 but no export of these weights exists yet
    (``export_ready`` false) and fewer than :data:`FIRST_EXPORT_MIN_IMAGES` images are to be segmented,
    PyTorch bf16 runs instead: the export would cost more than it saves on so few images.

    An explicit ``precision`` (``"32"``, ``"bf16"``, ``"int8"``) keeps the runtime choice within what runs
    that precision.

    Args:
        installed: Runtimes that can run these weights, e.g. ``installed_backends()`` (without ``"torch"``
            for an export folder, without ``"onnxruntime"`` where there is no ``model.onnx``).
        native_bf16: Whether the CPU computes bf16 natively.
        has_int8_export: Whether the weights folder is an OpenVINO export holding ``model_int8.xml``.
        base_channels: The model's width (``None``: unknown, treated as a full-size model).
        precision: ``"auto"``, ``"32"``, ``"bf16"`` or ``"int8"``.
        bf16_evidence: What says the CPU has (or lacks) native bf16, e.g. ``"avx512_bf16"``, for ``reason``.
        images: How many images are about to be segmented (``None``: unknown or many, e.g. a video).
        export_ready: Whether an OpenVINO export of these weights exists already (an export folder, or
            one in the export cache), so choosing OpenVINO costs no export now.

    Returns:
        The backend, precision and the reason, e.g. ``openvino bf16 (CPU has native bf16: avx512_bf16)``.

    Raises:
        UsageError: Nothing installed can run ``precision`` (int8 without an int8 export or OpenVINO,
            bf16 with only ONNX Runtime), or ``precision`` is unknown.

    Example:
        >>> choose_backend(["onnxruntime", "openvino", "torch"], native_bf16=True, bf16_evidence="avx512_bf16")
        BackendChoice(backend='openvino', precision='bf16', reason='CPU has native bf16: avx512_bf16')
        >>> str(choose_backend(["onnxruntime", "openvino", "torch"], native_bf16=False, base_channels=64))
        'openvino fp32 (CPU has no native bf16; OpenVINO leads fp32 for full-size models)'
        >>> str(choose_backend(["openvino", "torch"], native_bf16=True, images=40, export_ready=False))
        'torch bf16 (CPU has native bf16; 40 images do not pay for a first OpenVINO export (from 150 or once cached))'
    """
    if precision not in ("auto", "32", "bf16", "int8"):
        raise UsageError(f"precision must be auto, 32, bf16 or int8, got {precision!r}")
    bf16_note = f": {bf16_evidence}" if bf16_evidence else ""
    if precision in ("auto", "int8") and has_int8_export and "openvino" in installed:
        return BackendChoice("openvino", "int8", "the weights are an OpenVINO export with model_int8.xml")
    if precision == "int8":
        raise UsageError(
            "int8 needs an OpenVINO export made with `polypseg export --format openvino --int8` and OpenVINO "
            "installed; pass that folder as --weights"
        )
    if precision == "bf16" or (precision == "auto" and native_bf16):
        why = "CPU has native bf16" + bf16_note if native_bf16 else "precision bf16 asked for"
        small = base_channels is not None and base_channels <= SMALL_MODEL_CHANNELS
        first_use = (
            precision == "auto"
            and not export_ready
            and images is not None
            and images < FIRST_EXPORT_MIN_IMAGES
            and "torch" in installed
        )
        if first_use and not small:
            return BackendChoice(
                "torch",
                "bf16",
                f"{why}; {images} image{'s do' if images != 1 else ' does'} not pay for a first OpenVINO export "
                f"(from {FIRST_EXPORT_MIN_IMAGES} or once cached)",
            )
        for backend in ("torch", "openvino") if small else ("openvino", "torch"):
            if backend in installed:
                if small and backend == "torch":
                    extra = "; PyTorch leads bf16 for small models"
                elif backend == "openvino" or precision == "bf16":
                    extra = ""
                else:
                    extra = "; OpenVINO not installed"
                return BackendChoice(backend, "bf16", why + extra)
        if precision == "bf16":
            raise UsageError(f"bf16 needs OpenVINO or PyTorch weights; only {', '.join(installed) or 'nothing'} here")
    small = base_channels is not None and base_channels <= SMALL_MODEL_CHANNELS
    order = ("onnxruntime", "openvino", "torch") if small else ("openvino", "onnxruntime", "torch")
    if precision == "32":
        why = "precision 32 asked for"
    elif native_bf16:
        why = f"CPU has native bf16{bf16_note}, but no installed bf16 runtime can run these weights"
    else:
        why = f"CPU has no native bf16{bf16_note}"
    names = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
    leader = f"{names[order[0]]} leads fp32 for " + (
        f"small models (width <= {SMALL_MODEL_CHANNELS})" if small else "full-size models"
    )
    for backend in order:
        if backend in installed:
            if backend == "torch":
                note = "neither ONNX Runtime nor OpenVINO installed"
            else:
                note = leader if backend == order[0] else f"{names[order[0]]} not installed"
            return BackendChoice(backend, "32", f"{why}; {note}")
    raise UsageError("no inference runtime can run these weights")


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
            precision = auto_precision(self.device)
        if precision not in ("32", "bf16"):
            raise UsageError(f"torch backend precision must be auto, 32 or bf16, got {precision!r}")
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
        ort = require("onnxruntime", "--backend onnxruntime")
        path = Path(path)
        path = path / "model.onnx" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such ONNX model (run polypseg export first)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ONNX Runtime's errors (InvalidProtobuf, Fail, ...) derive from Exception only
            raise WeightsError(f"{path}: ONNX Runtime cannot load this model ({one_line(error)[:300]})") from None
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
        ov = require("openvino", "--backend openvino")
        if precision not in ("32", "bf16", "int8"):
            raise UsageError(f"openvino precision must be 32, bf16 or int8, got {precision!r}")
        path = Path(path)
        if path.is_dir():
            candidates = ["model_int8.xml"] if precision == "int8" else ["model.xml", "model.onnx"]
            found = [path / name for name in candidates if (path / name).exists()]
            if not found:
                raise FileNotFoundError(f"{path}: no {' or '.join(candidates)} (run polypseg export first)")
            path = found[0]
        elif not path.is_file():
            raise FileNotFoundError(f"{path}: no such model file (run polypseg export first)")
        self.precision = precision
        config = {
            "PERFORMANCE_HINT": "LATENCY" if latency else "THROUGHPUT",
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
        core = ov.Core()
        try:
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except RuntimeError as error:  # a damaged or foreign model file
            raise WeightsError(f"{path}: OpenVINO cannot load this model ({one_line(error)[:300]})") from None
        self.request = self.compiled.create_infer_request()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: np.ascontiguousarray(images, dtype=np.float32)})
        return np.asarray(result[self.compiled.output(0)], dtype=np.float32)
