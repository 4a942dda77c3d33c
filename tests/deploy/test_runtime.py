"""``--backend auto``: the decision rule for CPUs with and without native bf16, and how predict reports it."""

from __future__ import annotations

import json

import pytest

from polypseg.apps.cli import main
from polypseg.apps.cli_predict import _throughput
from polypseg.deploy import runtime as export
from polypseg.deploy.backends import (
    FIRST_EXPORT_MIN_IMAGES,
    SMALL_MODEL_CHANNELS,
    BackendChoice,
    TorchBackend,
    choose_backend,
)
from polypseg.deploy.runtime import CachedExport, plan_auto_backend
from polypseg.hardware import NATIVE_BF16_ENV
from polypseg.inference import predictor as predictor_module
from polypseg.weights import resolve, save_pretrained

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


@pytest.mark.parametrize("flag", ["0", "1"])
def test_plan_knows_whether_an_export_is_cached(tiny_unet, tmp_path, monkeypatch, flag):
    from polypseg.model import UNet

    monkeypatch.setattr(export, "installed_backends", lambda: list(ALL))
    monkeypatch.setenv(NATIVE_BF16_ENV, flag)
    monkeypatch.setenv("POLYPSEG_CACHE", str(tmp_path / "cache"))
    weights = save_pretrained(UNet(3, 3, base_channels=24), tmp_path / "w24", metadata={"input_size": [64, 64]})
    first = plan_auto_backend(weights, images=3)
    assert first[:2] == (("torch", "bf16") if flag == "1" else ("openvino", "32"))
    cached = export._cache_target(resolve(weights), "openvino")
    cached.mkdir(parents=True)
    (cached / "model.xml").write_bytes(b"")  # an export made earlier: OpenVINO costs nothing more now
    assert plan_auto_backend(weights, images=3)[:2] == ("openvino", "bf16" if flag == "1" else "32")


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


@pytest.fixture
def width8_weights(tiny_unet, tmp_path):
    return save_pretrained(tiny_unet, tmp_path / "weights", metadata={"input_size": [64, 64]})


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("1", ("torch", "bf16", "CPU has native bf16: POLYPSEG_NATIVE_BF16=1; PyTorch leads bf16 for small models")),
        ("0", ("onnxruntime", "32", None)),
    ],
)
def test_plan_follows_the_native_bf16_override(width8_weights, monkeypatch, flag, expected):
    monkeypatch.setattr(export, "installed_backends", lambda: list(ALL))
    monkeypatch.setenv(NATIVE_BF16_ENV, flag)
    choice = plan_auto_backend(width8_weights)
    assert choice[:2] == expected[:2]  # width 8 is small: PyTorch leads bf16, ONNX Runtime fp32
    assert expected[2] is None or choice.reason == expected[2]


@pytest.mark.parametrize("flag", ["0", "1"])
def test_plan_for_export_folders(tmp_path, monkeypatch, flag):
    monkeypatch.setattr(export, "installed_backends", lambda: list(ALL))
    monkeypatch.setenv(NATIVE_BF16_ENV, flag)
    folder = tmp_path / "ov"
    folder.mkdir()
    for name in ("model.onnx", "model.xml", "model.bin", "model_int8.xml", "model_int8.bin"):
        (folder / name).write_bytes(b"")
    (folder / "config.json").write_text(json.dumps({"base_channels": 16, "input_size": [256, 256]}))
    assert plan_auto_backend(folder)[:2] == ("openvino", "int8")
    (folder / "model_int8.xml").unlink()
    (folder / "model.onnx").unlink()  # no model.onnx: ONNX Runtime cannot run it; torch never runs an export
    assert plan_auto_backend(folder)[:2] == ("openvino", "bf16" if flag == "1" else "32")


@pytest.mark.parametrize(("flag", "precision"), [("1", "bf16"), ("0", "32")])
def test_predict_auto_says_once_what_it_chose(
    width8_weights, write_image, tmp_path, monkeypatch, capsys, flag, precision
):
    monkeypatch.setattr(export, "installed_backends", lambda: ["torch"])  # no export: fast
    monkeypatch.setenv(NATIVE_BF16_ENV, flag)
    image = write_image(tmp_path / "a.jpg", size=(70, 50))
    code = main(
        ["predict", "--backend", "auto", "--weights", str(width8_weights), str(image), "--out", str(tmp_path / "o")]
    )
    assert code == 0
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"backend auto: torch {'fp32' if precision == '32' else precision} (")
    assert f"{NATIVE_BF16_ENV}={flag}" in line
    assert "1 images segmented" in captured.out and "images/s" in captured.out


def test_predict_auto_counts_its_images_for_the_first_export(width8_weights, write_image, tmp_path, monkeypatch):
    seen = {}

    def fake_load_backend(weights, backend, precision, images=None, decoder_concat=None):
        seen.update(backend=backend, images=images)
        from polypseg.weights import load_pretrained

        return TorchBackend(load_pretrained(weights, decoder_concat=decoder_concat), "32")

    monkeypatch.setattr(predictor_module, "load_backend", fake_load_backend)
    folder = tmp_path / "in"
    for name in ("a.jpg", "b.png", "sub/c.jpg"):
        write_image(folder / name, size=(40, 30))
    out = folder / "pred"  # inside the input folder: its files are never counted
    args = ["predict", "--weights", str(width8_weights), str(folder), str(folder / "a.jpg"), "--out", str(out)]
    assert main(["predict", "--backend", "auto", *args[1:]]) == 0
    assert seen == {"backend": "auto", "images": 3}
    assert main([*args, "--overwrite"]) == 0  # not auto: the inputs are not listed twice
    assert seen == {"backend": "torch", "images": None}


def test_predict_reports_the_first_export_apart_from_the_speed(
    width8_weights, write_image, tmp_path, monkeypatch, capsys
):
    from polypseg.weights import load_pretrained

    def fake_load_backend(weights, backend, precision, images=None, decoder_concat=None):
        loaded = TorchBackend(load_pretrained(weights, decoder_concat=decoder_concat), "32")
        loaded.export = CachedExport(tmp_path / "cache" / "x-onnx", "onnx", 12.3)
        loaded.auto_choice = BackendChoice("onnxruntime", "32", "CPU has no native bf16")
        return loaded

    monkeypatch.setattr(predictor_module, "load_backend", fake_load_backend)
    image = write_image(tmp_path / "a.jpg", size=(70, 50))
    assert (
        main(
            ["predict", "--backend", "auto", "--weights", str(width8_weights), str(image), "--out", str(tmp_path / "o")]
        )
        == 0
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"exported the model for onnx in 12.3 s (cached in {tmp_path / 'cache' / 'x-onnx'})",
        "backend auto: onnxruntime fp32 (CPU has no native bf16)",
    ]


def test_throughput_is_given_with_and_without_the_export():
    assert (
        _throughput(10, 14.0, 12.0)
        == " in 14.0 s, 0.71 images/s (5.00 images/s in 2.0 s without the 12.0 s first export)"
    )
    assert _throughput(10, 2.0, 0.0) == " in 2.0 s, 5.00 images/s"
    assert _throughput(0, 2.0, 0.0) == ""
