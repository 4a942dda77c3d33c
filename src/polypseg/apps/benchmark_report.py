"""``polypseg benchmark``'s results and their reading: ratios, ``--backend auto``'s verdicts, the table.

:mod:`polypseg.apps.benchmark` measures the cases; this module holds what a measurement is
(:class:`BenchmarkCase`, :class:`BenchmarkResult`) and everything computed from the measured figures
without timing anything: the ratios to eager PyTorch fp32 (:func:`add_ratios`), which case
``--backend auto`` takes on this machine and whether it is within 10% of the fastest
(:func:`auto_choices`, :func:`auto_summary`), the machine's description (:func:`machine_header`) and the
printed table (:func:`format_results`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from polypseg.deploy.backends import choose_backend, installed_backends
from polypseg.hardware import cpu_flags, cpu_supports_bf16, native_bf16_evidence

__all__ = [
    "AUTO_TOLERANCE",
    "BenchmarkCase",
    "BenchmarkResult",
    "add_ratios",
    "auto_choices",
    "auto_summary",
    "auto_marker",
    "format_results",
    "machine",
    "machine_header",
    "row",
]


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


def auto_marker(case: BenchmarkCase, choices: dict[int, dict[str, Any]]) -> str:
    """``<- auto`` where ``case`` is what ``--backend auto`` takes, ``<- auto (int8 export)`` for an int8 export."""
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
    info = machine()
    flags = ", ".join(f"{flag} {'yes' if present else 'no'}" for flag, present in cpu_flags().items())
    native = "yes" if info["native_bf16"] else "no"
    return (
        f"CPU: {info['cpu'] or 'unknown'}, {info['cores']} cores; flags: {flags}; "
        f"native bf16: {native} ({native_bf16_evidence()})"
    )


def machine() -> dict[str, Any]:
    """The machine in the JSON: CPU model, cores, the CPU flags, native bf16 and the torch version."""
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


def row(result: BenchmarkResult, marker: str = "") -> str:
    """One line of the table: shape, case, images/s, ratio, GFLOP/s, peak memory (or the error)."""
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
    rows = [row(result, auto_marker(result.case, choices)) for result in results]
    verdicts = _format_auto_summary(auto_summary(results, choices))
    auto = ["", "--backend auto on this machine (<- auto in the table):", *verdicts] if verdicts else []
    return "\n".join([machine_header(), header, *rows, *auto])
