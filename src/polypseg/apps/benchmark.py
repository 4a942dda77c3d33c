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
(:func:`polypseg.backends.choose_backend`) and says whether it is within 10% of the fastest case
(:func:`auto_summary`).

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
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from polypseg.deploy.backends import (
    OnnxRuntimeBackend,
    OpenVINOBackend,
    TorchBackend,
    choose_backend,
    installed_backends,
)
from polypseg.deploy.export import export_onnx, quantize_int8
from polypseg.files import atomic_write_text
from polypseg.hardware import cpu_flags, cpu_supports_bf16, native_bf16_evidence
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
#: ``auto``'s case counts as good when it runs at least this share slower than the fastest case, at most.
AUTO_TOLERANCE = 0.10


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
            progress(_row(result, _auto_marker(case, choices)))
    add_ratios(results)
    if out is not None:
        payload = {
            "machine": _machine(),
            "gflops_per_image": gflops,
            "results": [{**asdict(r), "label": r.case.label, "auto": _auto_marker(r.case, choices)} for r in results],
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


def auto_choices(widths: Any) -> dict[int, dict[str, Any]]:
    """What ``--backend auto`` takes on this machine for each model width, for weights and for an int8 export.

    Returns:
        ``{width: {"weights": BackendChoice, "int8_export": BackendChoice}}``: the choice for ordinary
        weights, and for an OpenVINO export holding ``model_int8.xml`` (the same where OpenVINO is missing).
    """
    installed, native, evidence = installed_backends(), cpu_supports_bf16(), native_bf16_evidence()
    return {
        width: {
            "weights": choose_backend(installed, native, False, width, bf16_evidence=evidence),
            "int8_export": choose_backend(installed, native, True, width, bf16_evidence=evidence),
        }
        for width in sorted(widths)
    }


def _is_choice(case: BenchmarkCase, choice: Any) -> bool:
    """Whether ``case`` measures what ``load_backend`` builds for ``choice`` (torch: channels_last, eager)."""
    return (
        case.kind == "infer"
        and case.backend == choice.backend
        and case.precision == choice.precision
        and case.channels_last
        and not case.compile
    )


def _auto_marker(case: BenchmarkCase, choices: dict[int, dict[str, Any]]) -> str:
    pair = choices.get(case.base_channels)
    if not pair:
        return ""
    if _is_choice(case, pair["weights"]):
        return "<- auto"
    if _is_choice(case, pair["int8_export"]):
        return "<- auto (int8 export)"
    return ""


def auto_summary(
    results: list[BenchmarkResult], choices: dict[int, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """For each width and batch: ``auto``'s case beside the fastest inference case of the same run.

    ``within_10_percent`` is True where auto's case (for ordinary weights) runs at least
    ``1 - AUTO_TOLERANCE`` times the fastest case's images/s; ``within_10_percent_without_int8`` compares
    with the fastest case that needs no int8 export; ``int8_export_within_10_percent`` does the same for
    auto's case with an int8 export. Values are ``None`` where auto's case was not measured or failed.

    Args:
        results: Measured cases (the inference ones are used).
        choices: :func:`auto_choices` (default: computed for the widths in ``results``).
    """
    infer = [r for r in results if r.case.kind == "infer" and r.images_per_second]
    choices = choices if choices is not None else auto_choices({r.case.base_channels for r in infer})
    summary = []
    for width, batch in sorted({(r.case.base_channels, r.case.batch_size) for r in infer}, key=lambda s: (-s[0], s[1])):
        same = [r for r in infer if (r.case.base_channels, r.case.batch_size) == (width, batch)]
        fastest = max(same, key=lambda r: r.images_per_second)
        plain = [r for r in same if r.case.precision != "int8"]
        fastest_plain = max(plain, key=lambda r: r.images_per_second) if plain else None
        pair = choices.get(width)
        if pair is None:
            continue
        auto = next((r for r in same if _is_choice(r.case, pair["weights"])), None)
        auto_int8 = next((r for r in same if _is_choice(r.case, pair["int8_export"])), None)

        def near(candidate: BenchmarkResult | None, best: BenchmarkResult | None) -> bool | None:
            if candidate is None or best is None:
                return None
            return candidate.images_per_second >= (1 - AUTO_TOLERANCE) * best.images_per_second

        summary.append(
            {
                "base_channels": width,
                "batch_size": batch,
                "auto": str(pair["weights"]),
                "auto_case": auto.case.label if auto else None,
                "auto_images_per_second": auto.images_per_second if auto else None,
                "fastest_case": fastest.case.label,
                "fastest_images_per_second": fastest.images_per_second,
                "within_10_percent": near(auto, fastest),
                "fastest_case_without_int8": fastest_plain.case.label if fastest_plain else None,
                "within_10_percent_without_int8": near(auto, fastest_plain),
                "int8_export_case": auto_int8.case.label if auto_int8 else None,
                "int8_export_within_10_percent": near(auto_int8, fastest),
            }
        )
    return summary


def _format_auto_summary(summary: list[dict[str, Any]]) -> list[str]:
    def verdict(entry: dict[str, Any], key: str, speed: float | None, best: str, best_speed: float | None) -> str:
        if entry[key] is None or speed is None or not best_speed:
            return "not measured"
        if entry[key]:
            return f"within {AUTO_TOLERANCE:.0%} of the fastest" + ("" if speed >= best_speed else f" ({best})")
        return f"{1 - speed / best_speed:.0%} slower than the fastest ({best}): NOT within {AUTO_TOLERANCE:.0%}"

    lines = []
    for entry in summary:
        shape = f"w{entry['base_channels']:<3} b{entry['batch_size']:<2}"
        speed = entry["auto_images_per_second"]
        text = f"{shape} auto takes {entry['auto_case'] or entry['auto']}: "
        text += verdict(entry, "within_10_percent", speed, entry["fastest_case"], entry["fastest_images_per_second"])
        best_plain = entry["fastest_case_without_int8"]
        near_plain = entry["within_10_percent_without_int8"]
        if entry["within_10_percent"] is False and near_plain is not None and best_plain != entry["fastest_case"]:
            near = "within" if near_plain else "NOT within"
            text += f"; {near} {AUTO_TOLERANCE:.0%} of the fastest without an int8 export ({best_plain})"
        if entry["int8_export_case"] and entry["int8_export_case"] != entry["auto_case"]:
            near = entry["int8_export_within_10_percent"]
            label = "within" if near else "NOT within" if near is not None else "not measured:"
            text += f"; with an int8 export: {entry['int8_export_case']}, {label} {AUTO_TOLERANCE:.0%} of the fastest"
        lines.append(text)
    return lines


def machine_header() -> str:
    """One line: the CPU, its cores and the flags that decide the fast paths, and whether bf16 is native."""
    machine = _machine()
    flags = ", ".join(f"{flag} {'yes' if present else 'no'}" for flag, present in cpu_flags().items())
    native = "yes" if machine["native_bf16"] else "no"
    return (
        f"CPU: {machine['cpu'] or 'unknown'}, {machine['cores']} cores; flags: {flags}; "
        f"native bf16: {native} ({native_bf16_evidence()})"
    )


def _machine() -> dict[str, Any]:
    model = ""
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "native_bf16": cpu_supports_bf16(),
        "torch": torch.__version__,
    }


def _row(result: BenchmarkResult, marker: str = "") -> str:
    case = result.case
    shape = f"w{case.base_channels:<3} b{case.batch_size:<2}"
    marker = f" {marker}" if marker else ""
    if result.error:
        return f"{shape} {case.label:38} failed: {result.error}{marker}"
    ratio = f"{result.ratio:6.2f}x" if result.ratio is not None else "      -"
    gflops = f"{result.gflops_per_second:7.1f}" if result.gflops_per_second is not None else "      -"
    return (
        f"{shape} {case.label:38} {result.images_per_second:8.2f} img/s {ratio} {gflops} GFLOP/s "
        f"{result.peak_rss_mb:7.0f} MB{marker}"
    )


def format_results(results: list[BenchmarkResult], choices: dict[int, dict[str, Any]] | None = None) -> str:
    """The table: the machine's CPU flags, one row per case (``<- auto`` marks auto's case), and auto's verdicts.

    Args:
        results: Measured cases.
        choices: :func:`auto_choices` (default: computed here for the widths in ``results``).
    """
    choices = choices if choices is not None else auto_choices({r.case.base_channels for r in results})
    header = f"{'shape':9} {'case':38} {'speed':>14} {'ratio':>7} {'GFLOP/s':>15} {'peak RSS':>10}"
    rows = [_row(result, _auto_marker(result.case, choices)) for result in results]
    verdicts = _format_auto_summary(auto_summary(results, choices))
    auto = ["", "--backend auto on this machine (<- auto in the table):", *verdicts] if verdicts else []
    return "\n".join([machine_header(), header, *rows, *auto])
