"""The runtimes behind ``backend(images) -> logits`` (``polypseg.deploy.backends``), and ``--backend auto``'s
rule for CPUs with and without native bf16."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from polypseg.deploy.backends import (
    FIRST_EXPORT_MIN_IMAGES,
    SMALL_MODEL_CHANNELS,
    BackendChoice,
    OnnxRuntimeBackend,
    OpenVINOBackend,
    TorchBackend,
    choose_backend,
    installed_backends,
)
from polypseg.deploy.export import _export_openvino, quantize_int8
from polypseg.errors import MissingExtraError, WeightsError

ALL = ["onnxruntime", "openvino", "torch"]


@pytest.mark.parametrize("width", [32, 64, None])
def test_native_bf16_cpu_takes_openvino_bf16(width):
    """Measured on an AVX512-BF16 CPU (width 64, batch 1): OpenVINO bf16 2.51-2.87x eager fp32 (fastest but int8)."""
    choice = choose_backend(ALL, native_bf16=True, base_channels=width, bf16_evidence="avx512_bf16")
    assert (choice.backend, choice.precision) == ("openvino", "bf16")
    assert str(choice) == "openvino bf16 (CPU has native bf16: avx512_bf16)"


@pytest.mark.parametrize("width", [8, SMALL_MODEL_CHANNELS])
def test_native_bf16_cpu_takes_torch_bf16_for_small_models(width):
    """Measured on an AVX512-BF16 CPU (width 16, batch 8): PyTorch bf16 2.05x eager fp32, OpenVINO bf16 1.79x."""
    choice = choose_backend(ALL, native_bf16=True, base_channels=width, bf16_evidence="avx512_bf16")
    assert (choice.backend, choice.precision) == ("torch", "bf16")
    assert "small models" in choice.reason
    # Without PyTorch (an export folder), OpenVINO bf16 is next.
    assert choose_backend(["onnxruntime", "openvino"], native_bf16=True, base_channels=width)[:2] == (
        "openvino",
        "bf16",
    )


@pytest.mark.parametrize(
    ("width", "expected"), [(64, "openvino"), (32, "openvino"), (None, "openvino"), (16, "onnxruntime")]
)
def test_cpu_without_native_bf16_takes_fp32_by_model_width(width, expected):
    """Without native bf16 (bf16 emulated, ~3x slower): OpenVINO fp32 for full models, ONNX Runtime for small ones."""
    choice = choose_backend(ALL, native_bf16=False, base_channels=width)
    assert (choice.backend, choice.precision) == (expected, "32")
    assert "no native bf16" in choice.reason


@pytest.mark.parametrize("native", [True, False])
def test_an_int8_export_wins_on_both_kinds_of_cpu(native):
    choice = choose_backend(["onnxruntime", "openvino"], native_bf16=native, has_int8_export=True, base_channels=16)
    assert choice == BackendChoice("openvino", "int8", "the weights are an OpenVINO export with model_int8.xml")


def test_fallbacks_where_runtimes_are_missing():
    # native bf16 without OpenVINO: PyTorch bf16 (2.06x) ran faster than ONNX Runtime fp32 (1.31x)
    assert choose_backend(["onnxruntime", "torch"], native_bf16=True)[:2] == ("torch", "bf16")
    assert choose_backend(["onnxruntime", "torch"], native_bf16=False, base_channels=64)[:2] == ("onnxruntime", "32")
    assert choose_backend(["openvino", "torch"], native_bf16=False, base_channels=16)[:2] == ("openvino", "32")
    assert choose_backend(["torch"], native_bf16=True)[:2] == ("torch", "bf16")
    assert choose_backend(["torch"], native_bf16=False)[:2] == ("torch", "32")
    # an export folder (no torch) holding only model.onnx, on a bf16 CPU: ONNX Runtime fp32
    assert choose_backend(["onnxruntime"], native_bf16=True)[:2] == ("onnxruntime", "32")
    # an int8 export is no use without OpenVINO
    assert choose_backend(["onnxruntime", "torch"], native_bf16=False, has_int8_export=True)[:2] == (
        "onnxruntime",
        "32",
    )


@pytest.mark.parametrize("width", [32, 64, None])
def test_first_use_with_few_images_skips_the_openvino_export_on_native_bf16(width):
    """Measured (width 64, 40 JPEGs, AVX512-BF16): OpenVINO's first export (13.5 s) made auto as slow as fp32."""
    few = FIRST_EXPORT_MIN_IMAGES - 1
    choice = choose_backend(ALL, native_bf16=True, base_channels=width, images=few, export_ready=False)
    assert (choice.backend, choice.precision) == ("torch", "bf16")
    assert f"{few} images do not pay for a first OpenVINO export" in choice.reason
    one = choose_backend(ALL, native_bf16=True, base_channels=width, images=1, export_ready=False)
    assert "1 image does not pay" in one.reason
    # Many images, an unknown count (a video) or an export made already: OpenVINO bf16 as before.
    for images, ready in ((FIRST_EXPORT_MIN_IMAGES, False), (None, False), (few, True)):
        again = choose_backend(ALL, native_bf16=True, base_channels=width, images=images, export_ready=ready)
        assert again[:2] == ("openvino", "bf16")
    # Only native bf16 has a no-export runtime as fast as that; without it the rule does not change.
    assert choose_backend(ALL, native_bf16=False, base_channels=width, images=1, export_ready=False)[:2] == (
        "openvino",
        "32",
    )
    # An explicit precision is not second-guessed.
    assert choose_backend(ALL, native_bf16=True, base_channels=width, images=1, export_ready=False, precision="bf16")[
        :2
    ] == ("openvino", "bf16")


def test_an_explicit_precision_is_kept():
    assert choose_backend(ALL, native_bf16=True, precision="32", base_channels=64)[:2] == ("openvino", "32")
    assert choose_backend(ALL, native_bf16=False, precision="bf16")[:2] == ("openvino", "bf16")
    assert choose_backend(ALL, native_bf16=True, has_int8_export=True, precision="bf16")[:2] == ("openvino", "bf16")
    with pytest.raises(ValueError, match="int8"):
        choose_backend(ALL, native_bf16=True, precision="int8")
    with pytest.raises(ValueError, match="bf16"):
        choose_backend(["onnxruntime"], native_bf16=True, precision="bf16")
    with pytest.raises(ValueError, match="precision"):
        choose_backend(ALL, native_bf16=True, precision="fp8")
    with pytest.raises(ValueError, match="runtime"):
        choose_backend([], native_bf16=False)


@pytest.mark.parametrize(
    "module, build",
    [
        ("onnxruntime", lambda path: OnnxRuntimeBackend(path)),
        ("openvino", lambda path: OpenVINOBackend(path)),
        ("openvino", lambda path: _export_openvino(path / "model.onnx", path, None)),
        ("nncf", lambda path: quantize_int8(None, np.zeros((1, 3, 16, 16), dtype=np.float32))),
    ],
)
def test_a_missing_runtime_names_the_fast_extra(tmp_path, monkeypatch, module, build):
    monkeypatch.setitem(sys.modules, module, None)  # `import MODULE` raises ImportError
    with pytest.raises(MissingExtraError, match=re.escape("pip install 'polypseg[fast]'")) as caught:
        build(tmp_path)
    assert isinstance(caught.value, ImportError) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "backend, name",
    [(OnnxRuntimeBackend, "model.onnx"), (OpenVINOBackend, "model.xml"), (OpenVINOBackend, "model.onnx")],
)
def test_a_damaged_model_file_is_one_line_naming_it(tmp_path, backend, name):
    pytest.importorskip("onnxruntime")  # the fast extra
    (tmp_path / name).write_bytes(b"<net> not a model")
    with pytest.raises(WeightsError, match=f"{name}: .* cannot load this model") as caught:
        backend(tmp_path / name)
    assert "\n" not in str(caught.value)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        backend(tmp_path / "missing.onnx")


def test_torch_backend_precisions(tiny_unet):
    images = np.random.default_rng(2).random((2, 3, 32, 32), dtype=np.float32)
    fp32 = TorchBackend(tiny_unet, precision="32")(images)
    bf16 = TorchBackend(tiny_unet, precision="bf16")(images)
    assert fp32.shape == bf16.shape == (2, 3, 32, 32) and fp32.dtype == np.float32
    assert (fp32.argmax(1) == bf16.argmax(1)).mean() > 0.9
    with pytest.raises(ValueError, match="precision"):
        TorchBackend(tiny_unet, precision="int4")


def test_installed_backends_lists_torch_last():
    pytest.importorskip("onnxruntime")  # the fast extra
    backends = installed_backends()
    assert backends == ["onnxruntime", "openvino", "torch"]
