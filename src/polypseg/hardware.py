"""Facts about the machine that decide the fastest numeric path."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["cpu_supports_bf16", "resolve_precision"]


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); without it bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """Turn a precision name into Lightning's; ``"auto"`` picks bf16-mixed where it is native, else 32-true.

    Example:
        >>> resolve_precision("32")
        '32-true'
    """
    if precision != "auto":
        return {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}.get(precision, precision)
    use_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if use_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_supports_bf16() else "32-true"
