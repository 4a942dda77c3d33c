"""``polypseg benchmark``: speed and memory of every backend and precision, side by side, in one run.

Each measurement runs in a fresh subprocess (so its peak memory is its own) one after the other, and
every figure is also given as a ratio to PyTorch eager fp32 of the same width and batch measured in
the same run: this machine is shared and noisy, so only figures from one run compare.

Measured: network images/s (random weights, 256x256) for each backend/precision, widths 64/32/16,
batch 1 and 8; achieved GFLOP/s; peak resident memory; end-to-end ``predict`` throughput on distinct real
JPEGs (decode, resize, network, resize back, PNG writing; images/s = images written / seconds, see
:func:`predict_inputs`); training images/s fp32 vs bf16 (batch 8).

The run records the CPU flags that decide the fast paths (:func:`polypseg.hardware.cpu_flags`) and, for
each model width, marks the case ``--backend auto`` would take on this machine
(:func:`polypseg.deploy.backends.choose_backend`) and says whether it is within 10% of the fastest case
(:func:`auto_summary`).

The full run also measures ``torch.compile`` (fp32, channels_last) beside eager PyTorch: inference at
every width and batch, and a training step (as ``TrainConfig.compile`` does). Compiling takes 25-70 s
per case on a 2-core CPU (width 16; more for wider models), so ``--quick`` (about two minutes) leaves
these cases out. The compile (warm-up) time is excluded from the speed and reported as
``extra["warmup_s"]`` in the JSON.

This module measures; the cases' types, the ratios, ``auto``'s verdicts and the table are in
:mod:`polypseg.apps.benchmark_report` (re-exported here).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from polypseg.apps.benchmark_report import (
    AUTO_TOLERANCE,
    BenchmarkCase,
    BenchmarkResult,
    add_ratios,
    auto_choices,
    auto_marker,
    auto_summary,
    format_results,
    machine,
    machine_header,
)
from polypseg.apps.benchmark_report import row as _row
from polypseg.deploy.backends import (
    OnnxRuntimeBackend,
    OpenVINOBackend,
    TorchBackend,
    installed_backends,
)
from polypseg.deploy.export import export_onnx, quantize_int8
from polypseg.errors import UsageError
from polypseg.extras import require
from polypseg.files import atomic_write_text
from polypseg.images import network_input, read_image
from polypseg.inference import Predictor, predict_files
from polypseg.losses import CombinedLoss
from polypseg.model import UNet
from polypseg.weights import bundled_examples_dir, load_pretrained

__all__ = [
    "AUTO_TOLERANCE",
    "PREDICT_IMAGES",
    "PREDICT_IMAGES_DIR",
    "BenchmarkCase",
    "BenchmarkResult",
    "add_ratios",
    "auto_choices",
    "auto_summary",
    "default_cases",
    "format_results",
    "machine_header",
    "model_gflops",
    "predict_inputs",
    "run_benchmark",
]

#: Real JPEGs for the end-to-end ``predict`` case, relative to the working directory like ``--data``'s
#: default; where the folder is missing, copies of the bundled examples are used (:func:`predict_inputs`).
PREDICT_IMAGES_DIR = Path("../shared/datasets/kvasir-seg/images")
#: How many distinct images the ``predict`` case segments.
PREDICT_IMAGES = 40


def model_gflops(base_channels: int, size: int = 256) -> float:
    """Forward-pass GFLOPs (multiply-add = 2 FLOPs) of one image, counted by torch's FlopCounterMode."""
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
    if case.backend not in ("torch", "onnxruntime", "openvino"):
        raise UsageError(f"unknown backend {case.backend!r}")
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
        raise UsageError(f"compile is for the torch backend, not {case.backend!r}")
    onnx_path = workdir / f"unet{case.base_channels}.onnx"
    if not onnx_path.exists():
        export_onnx(model, onnx_path)
    if case.backend == "onnxruntime":
        return OnnxRuntimeBackend(onnx_path)
    if case.precision == "int8":  # quantised as `polypseg export --int8` does, on the bundled examples
        ov = require("openvino", "the int8 case")
        calibration = network_input([read_image(p) for p in sorted(bundled_examples_dir().glob("*.jpg"))], 256)
        quantised = quantize_int8(ov.convert_model(str(onnx_path)), calibration)
        path = workdir / f"unet{case.base_channels}_int8.xml"
        ov.save_model(quantised, str(path), compress_to_fp16=False)
        return OpenVINOBackend(path, "int8", latency=case.batch_size == 1)
    return OpenVINOBackend(onnx_path, case.precision, latency=case.batch_size == 1)


def predict_inputs(folder: Path, count: int | None = None, source: Path | None = None) -> list[Path]:
    """Distinct image files for the end-to-end ``predict`` case (``predict_files`` drops repeated paths).

    Args:
        folder: Where to put copies of the bundled examples when ``source`` holds no JPEGs.
        count: How many images (default :data:`PREDICT_IMAGES`).
        source: Folder of real JPEGs (default :data:`PREDICT_IMAGES_DIR`); every n-th is taken to get ``count``.

    Returns:
        ``count`` paths (fewer where ``source`` has fewer), no two the same file or the same name.
    """
    count = PREDICT_IMAGES if count is None else count
    source = PREDICT_IMAGES_DIR if source is None else Path(source)
    found = sorted(source.glob("*.jpg")) if source.is_dir() else []
    if found:
        return found[:: max(len(found) // count, 1)][:count]

    examples = sorted(bundled_examples_dir().glob("*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for index in range(count):
        example = examples[index % len(examples)]
        copy = folder / f"{index:03d}-{example.name}"
        shutil.copyfile(example, copy)
        copies.append(copy)
    return copies


def _measure_predict(case: BenchmarkCase, path: Path) -> tuple[float, dict[str, Any]]:
    """images/s of ``predict_files`` with the bundled model: images written (CSV rows) over seconds."""
    predictor = Predictor(load_pretrained(), precision=case.precision)
    inputs = predict_inputs(path / "predict-inputs")
    predict_files(predictor, inputs[:2], path / "predict-warmup", batch_size=case.batch_size, overwrite=True)
    start = time.perf_counter()
    summary = predict_files(predictor, inputs, path / "predict", batch_size=case.batch_size, overwrite=True)
    seconds = time.perf_counter() - start
    images = len(summary.rows)  # what was segmented and written, not how many paths went in
    if not images:
        raise RuntimeError(f"predict wrote no images: {'; '.join(summary.errors)[:200]}")
    extra = {"images": images, "seconds": seconds, "inputs": len(inputs), "precision": predictor.precision}
    return images / seconds, extra


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
        speed, extra = _measure_predict(case, path)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"images_per_second": speed, "peak_rss_mb": peak, "warmup_s": None, "extra": extra}
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
    extra.update(values.get("extra", {}))
    return BenchmarkResult(case, values["images_per_second"], values["peak_rss_mb"], extra=extra)


def default_cases(quick: bool) -> list[BenchmarkCase]:
    """The measurement plan: ``quick`` keeps width 64 at batch 1 and width 16 at batch 8, without compile.

    Each entry of ``variants`` is (backend, precision, channels_last, torch.compile).
    """
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
    choices = auto_choices({case.base_channels for case in cases})
    with tempfile.TemporaryDirectory(prefix="polypseg-bench-") as workdir:
        for case in cases:
            result = _run_case(case, workdir, seconds, isolated)
            if result.images_per_second is not None and case.kind in ("infer", "train"):
                multiplier = 1.0 if case.kind == "infer" else 3.0  # a training step ~ forward + 2x backward
                result.gflops_per_second = result.images_per_second * gflops[case.base_channels] * multiplier
            results.append(result)
            progress(_row(result, auto_marker(case, choices)))
    add_ratios(results)
    if out is not None:
        payload = {
            "machine": machine(),
            "gflops_per_image": gflops,
            "results": [{**asdict(r), "label": r.case.label, "auto": auto_marker(r.case, choices)} for r in results],
            "auto": {
                "choices": {
                    str(width): {kind: choice._asdict() for kind, choice in pair.items()}
                    for width, pair in choices.items()
                },
                "summary": auto_summary(results, choices),
            },
        }

        atomic_write_text(Path(out), json.dumps(payload, indent=2) + "\n")
    return results
