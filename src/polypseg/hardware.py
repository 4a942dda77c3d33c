"""Facts about the machine that decide the fastest numeric path.

Whether the CPU computes bf16 natively (AVX512-BF16 or AMX) is read from ``/proc/cpuinfo``. The
environment variable ``POLYPSEG_NATIVE_BF16`` overrides it: ``1`` behaves as if the CPU had native bf16,
``0`` as if it had not (anything else is an error). The test suite uses it to run every path that
chooses a precision both ways on any machine; users can use it to force or forbid bf16 on ``auto``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from polypseg.errors import UsageError

__all__ = [
    "NATIVE_BF16_ENV",
    "auto_precision",
    "cpu_flags",
    "cpu_supports_bf16",
    "native_bf16_evidence",
    "resolve_precision",
]

#: Environment variable that overrides the detection of native bf16: ``"1"`` (present) or ``"0"`` (absent).
NATIVE_BF16_ENV = "POLYPSEG_NATIVE_BF16"

#: CPU flags that decide the fast paths (bf16 and int8 arithmetic).
_INTERESTING_FLAGS = ("avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def cpu_flags() -> dict[str, bool]:
    """Which of the flags that matter for speed ``/proc/cpuinfo`` lists (all False where it is unreadable).

    Example:
        >>> sorted(cpu_flags())[:2]
        ['amx_bf16', 'amx_int8']
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    words: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            words.update(line.split(":", 1)[-1].split())
            break
    return {flag: flag in words for flag in _INTERESTING_FLAGS}


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); without it bf16 is slower than fp32.

    ``POLYPSEG_NATIVE_BF16=1`` or ``=0`` overrides what ``/proc/cpuinfo`` says.

    Raises:
        UsageError: ``POLYPSEG_NATIVE_BF16`` is set to something other than ``0`` or ``1``.
    """
    override = os.environ.get(NATIVE_BF16_ENV)
    if override is not None and override.strip() != "":
        if override.strip() not in ("0", "1"):
            raise UsageError(f"{NATIVE_BF16_ENV} must be 0 or 1, got {override!r}")
        return override.strip() == "1"
    flags = cpu_flags()
    return flags["avx512_bf16"] or flags["amx_bf16"]


def native_bf16_evidence() -> str:
    """Why :func:`cpu_supports_bf16` answers as it does, in a few words (for messages and reports).

    Returns:
        ``"POLYPSEG_NATIVE_BF16=1"`` (or ``=0``) where the override is set, else the flags that give native
        bf16 (``"avx512_bf16"``, ``"avx512_bf16, amx_bf16"``), else a note that neither is listed.
    """
    override = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if override in ("0", "1"):
        return f"{NATIVE_BF16_ENV}={override}"
    flags = cpu_flags()
    present = [flag for flag in ("avx512_bf16", "amx_bf16") if flags[flag]]
    return ", ".join(present) if present else "no avx512_bf16 or amx_bf16 in /proc/cpuinfo"


def auto_precision(device: str | torch.device = "cpu") -> str:
    """What ``precision="auto"`` means for inference on ``device``: bf16 where native, else fp32.

    ``"bf16"`` on a CUDA GPU that supports it or a CPU with :func:`cpu_supports_bf16`, else ``"32"``.

    The one place of the "auto bf16" rule for inference; training's is :func:`resolve_precision`.

    Example:
        >>> auto_precision("cpu") in ("bf16", "32")
        True
    """
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "32"
    return "bf16" if cpu_supports_bf16() else "32"


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
