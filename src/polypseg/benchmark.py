"""``polypseg benchmark``: speed and memory of every backend and precision, side by side, in one run.

Each measurement runs in a fresh subprocess (so its peak memory is its own) one after the other, and
every figure is also given as a ratio to PyTorch eager fp32 of the same width and batch measured in
the same run: this machine is shared and noisy, so only figures from one run compare.

Measured: network images/s (random weights, 256x256) for each backend/precision, widths 64/32/16,
batch 1 and 8; achieved GFLOP/s; peak resident memory; end-to-end ``predict`` throughput on real JPEGs
(decode, resize, network, resize back, PNG writing); training images/s fp32 vs bf16 (batch 8).

The full run also measures ``torch.compile`` (fp32, channels_last) beside eager PyTorch: inference at
every width and batch, and a training step (as ``TrainConfig.compile`` does). Compiling takes 25-70 s
per case on a 2-core CPU (width 16; more for wider models), so ``--quick`` (about two minutes) leaves
these cases out. The compile (warm-up) time is excluded from the speed and reported as
``extra["warmup_s"]`` in the JSON.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "BenchmarkCase",
    "BenchmarkResult",
    "add_ratios",
    "default_cases",
    "format_results",
    "model_gflops",
    "run_benchmark",
]


@dataclass(frozen=True)
class BenchmarkCase:
    """One measurement: ``kind`` is "infer", "train" or "predict"; ``compile``: torch.compile the model."""

    kind: str
    backend: str
    precision: str
    base_channels: int
    batch_size: int
    channels_last: bool = True
    compile: bool = False

    @property
    def label(self) -> str:
        """Short name used in the table."""
        compiled = " compile" if self.compile else ""
        if self.kind == "train":
            return f"train torch {self.precision}{compiled}"
        if self.kind == "predict":
            return f"predict end-to-end ({self.backend} {self.precision})"
        layout = "" if self.backend != "torch" or self.channels_last else " eager"
        return f"{self.backend} {self.precision}{layout}{compiled}"


@dataclass
class BenchmarkResult:
    """A measured case."""

    case: BenchmarkCase
    images_per_second: float | None
    peak_rss_mb: float | None
    gflops_per_second: float | None = None
    ratio: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def model_gflops(base_channels: int, size: int = 256) -> float:
    """Forward-pass GFLOPs (multiply-add = 2 FLOPs) of one image, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from polypseg.model import UNet

    model = UNet(base_channels=base_channels).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.rand(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def _timed(function: Any, warmup: int, min_seconds: float, min_repeats: int) -> tuple[float, float]:
    """Seconds per call of ``function`` after ``warmup`` untimed calls, and the seconds the warm-up took."""
    start = time.perf_counter()
    for _ in range(warmup):
        function()
    warmup_seconds = time.perf_counter() - start
    repeats, start = 0, time.perf_counter()
    while repeats < min_repeats or time.perf_counter() - start < min_seconds:
        function()
        repeats += 1
    return (time.perf_counter() - start) / repeats, warmup_seconds


def _backend(case: BenchmarkCase, workdir: Path) -> Any:
    from polypseg.backends import OnnxRuntimeBackend, OpenVINOBackend, TorchBackend
    from polypseg.export import export_onnx, images_for, quantize_int8
    from polypseg.model import UNet

    if case.backend not in ("torch", "onnxruntime", "openvino"):
        raise ValueError(f"unknown backend {case.backend!r}")
    torch.manual_seed(0)
    model = UNet(base_channels=case.base_channels).eval()
    if case.backend == "torch":
        backend = TorchBackend(model, precision=case.precision)
        if not case.channels_last:
            backend.model = backend.model.to(memory_format=torch.contiguous_format)
        if case.compile:
            backend.model = torch.compile(backend.model)
        return backend
    if case.compile:
        raise ValueError(f"compile is for the torch backend, not {case.backend!r}")
    onnx_path = workdir / f"unet{case.base_channels}.onnx"
    if not onnx_path.exists():
        export_onnx(model, onnx_path)
    if case.backend == "onnxruntime":
        return OnnxRuntimeBackend(onnx_path)
    if case.precision == "int8":  # quantised as `polypseg export --int8` does, on the bundled examples
        import openvino as ov

        from polypseg.weights import bundled_examples_dir

        calibration = images_for(sorted(bundled_examples_dir().glob("*.jpg")), 256)
        quantised = quantize_int8(ov.convert_model(str(onnx_path)), calibration)
        path = workdir / f"unet{case.base_channels}_int8.xml"
        ov.save_model(quantised, str(path), compress_to_fp16=False)
        return OpenVINOBackend(path, "int8", latency=case.batch_size == 1)
    return OpenVINOBackend(onnx_path, case.precision, latency=case.batch_size == 1)


def _measure(case: BenchmarkCase, workdir: str, seconds: float) -> dict[str, Any]:
    """Runs inside a subprocess: returns images/s and peak RSS of this process."""
    torch.set_num_threads(os.cpu_count() or 1)
    path = Path(workdir)
    warmup = 2 if case.compile else 1  # the first call compiles; the second checks it does not recompile
    warmup_seconds = None
    if case.kind == "infer":
        backend = _backend(case, path)
        images = np.random.default_rng(0).random((case.batch_size, 3, 256, 256), dtype=np.float32)
        per_batch, warmup_seconds = _timed(lambda: backend(images), warmup, min_seconds=seconds, min_repeats=2)
        speed = case.batch_size / per_batch
    elif case.kind == "train":
        from polypseg.losses import CombinedLoss
        from polypseg.model import UNet

        model = UNet(base_channels=case.base_channels).to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        forward = torch.compile(model) if case.compile else model  # as TrainConfig.compile: the model only
        loss_function = CombinedLoss()
        images = torch.rand(case.batch_size, 3, 256, 256).contiguous(memory_format=torch.channels_last)
        targets = torch.randint(0, 3, (case.batch_size, 256, 256))

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case.precision == "bf16"):
                loss = loss_function(forward(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        per_batch, warmup_seconds = _timed(step, warmup, min_seconds=seconds, min_repeats=2)
        speed = case.batch_size / per_batch
    else:
        from polypseg.inference import Predictor, predict_files
        from polypseg.weights import bundled_examples_dir, load_pretrained

        predictor = Predictor(load_pretrained(), precision=case.precision)
        inputs = sorted(bundled_examples_dir().glob("*.jpg")) * 4
        predict_files(predictor, inputs[:2], path / "warmup", batch_size=case.batch_size)
        start = time.perf_counter()
        predict_files(predictor, inputs, path / "predict", batch_size=case.batch_size, overwrite=True)
        speed = len(inputs) / (time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"images_per_second": speed, "peak_rss_mb": peak, "warmup_s": warmup_seconds}


def _run_case(case: BenchmarkCase, workdir: str, seconds: float, isolated: bool = True) -> BenchmarkResult:
    try:
        if isolated:
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                values = pool.apply(_measure, (case, workdir, seconds))
        else:
            values = _measure(case, workdir, seconds)
    except Exception as error:  # a missing runtime or a failed compile is reported, not fatal
        return BenchmarkResult(case, None, None, error=f"{type(error).__name__}: {error}".splitlines()[0])
    extra = {"warmup_s": values["warmup_s"]} if values.get("warmup_s") is not None else {}
    return BenchmarkResult(case, values["images_per_second"], values["peak_rss_mb"], extra=extra)


def default_cases(quick: bool) -> list[BenchmarkCase]:
    """The measurement plan: ``quick`` keeps width 64 at batch 1 and width 16 at batch 8, without compile.

    Each entry of ``variants`` is (backend, precision, channels_last, torch.compile).
    """
    from polypseg.backends import installed_backends

    backends = installed_backends()
    variants = [("torch", "32", False, False), ("torch", "32", True, False)]
    if not quick:  # compiling costs tens of seconds per case: full run only
        variants.append(("torch", "32", True, True))
    variants.append(("torch", "bf16", True, False))
    if "onnxruntime" in backends:
        variants.append(("onnxruntime", "32", True, False))
    if "openvino" in backends:
        variants += [("openvino", precision, True, False) for precision in ("32", "bf16", "int8")]
    shapes = [(64, 1), (16, 8)] if quick else [(width, batch) for width in (64, 32, 16) for batch in (1, 8)]
    cases = [
        BenchmarkCase("infer", backend, precision, width, batch, layout, compiled)
        for width, batch in shapes
        for backend, precision, layout, compiled in variants
    ]
    train_width = 16 if quick else 64
    training = [("32", False), ("bf16", False)] if quick else [("32", False), ("32", True), ("bf16", False)]
    cases += [
        BenchmarkCase("train", "torch", precision, train_width, 8, compile=compiled) for precision, compiled in training
    ]
    cases.append(BenchmarkCase("predict", "torch", "auto", 16, 4))
    return cases


def run_benchmark(
    quick: bool = False,
    seconds: float | None = None,
    out: str | Path | None = None,
    progress: Any = print,
    isolated: bool = True,
) -> list[BenchmarkResult]:
    """Measure every case of :func:`default_cases` one after another and compute ratios.

    Ratios (see :func:`add_ratios`): inference to PyTorch eager fp32 (contiguous layout, not compiled) of
    the same width and batch; training to training fp32 (not compiled); predict end-to-end has no ratio.
    ``isolated=False`` measures in this process (faster to start; peak memory is then the whole run's).
    """
    seconds = seconds if seconds is not None else (1.5 if quick else 5.0)
    results: list[BenchmarkResult] = []
    cases = default_cases(quick)
    gflops = {width: model_gflops(width) for width in sorted({64, 32, 16} | {c.base_channels for c in cases})}
    with tempfile.TemporaryDirectory(prefix="polypseg-bench-") as workdir:
        for case in cases:
            result = _run_case(case, workdir, seconds, isolated)
            if result.images_per_second is not None and case.kind in ("infer", "train"):
                multiplier = 1.0 if case.kind == "infer" else 3.0  # a training step ~ forward + 2x backward
                result.gflops_per_second = result.images_per_second * gflops[case.base_channels] * multiplier
            results.append(result)
            progress(_row(result))
    add_ratios(results)
    if out is not None:
        payload = {
            "machine": _machine(),
            "gflops_per_image": gflops,
            "results": [{**asdict(r), "label": r.case.label} for r in results],
        }
        from polypseg.io import atomic_write_text

        atomic_write_text(Path(out), json.dumps(payload, indent=2) + "\n")
    return results


def add_ratios(results: list[BenchmarkResult]) -> None:
    """Set each result's ``ratio`` to its speed over the eager PyTorch fp32 case of the same kind and shape.

    The base: inference, the contiguous-layout (not channels_last) uncompiled torch fp32 case of the same
    width and batch; training, the uncompiled fp32 training step of the same width and batch. Cases
    without a measured base, and ``predict``, keep ``ratio=None``.
    """
    for result in results:
        case = result.case
        if result.images_per_second is None or case.kind == "predict":
            continue
        for base in results:
            same = (
                base.case.kind == case.kind
                and base.case.base_channels == case.base_channels
                and base.case.batch_size == case.batch_size
                and base.case.backend == "torch"
                and base.case.precision == "32"
                and not base.case.compile
                and (case.kind == "train" or not base.case.channels_last)
            )
            if same and base.images_per_second:
                result.ratio = result.images_per_second / base.images_per_second


def _machine() -> dict[str, Any]:
    from polypseg.hardware import cpu_supports_bf16

    model = ""
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "native_bf16": cpu_supports_bf16(), "torch": torch.__version__}


def _row(result: BenchmarkResult) -> str:
    case = result.case
    shape = f"w{case.base_channels:<3} b{case.batch_size:<2}"
    if result.error:
        return f"{shape} {case.label:38} failed: {result.error}"
    ratio = f"{result.ratio:6.2f}x" if result.ratio is not None else "      -"
    gflops = f"{result.gflops_per_second:7.1f}" if result.gflops_per_second is not None else "      -"
    return (
        f"{shape} {case.label:38} {result.images_per_second:8.2f} img/s {ratio} {gflops} GFLOP/s "
        f"{result.peak_rss_mb:7.0f} MB"
    )


def format_results(results: list[BenchmarkResult]) -> str:
    """The table: one row per case."""
    header = f"{'shape':9} {'case':38} {'speed':>14} {'ratio':>7} {'GFLOP/s':>15} {'peak RSS':>10}"
    return "\n".join([header, *(_row(result) for result in results)])
