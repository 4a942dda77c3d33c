"""The runtime a command gets (``polypseg.deploy.runtime``): ``plan_auto_backend`` with and without a cached
export, what ``load_backend`` refuses, and how predict reports ``--backend auto``."""

from __future__ import annotations

import json

import pytest

from polypseg.apps.cli import main
from polypseg.deploy import runtime as export
from polypseg.deploy.backends import BackendChoice, TorchBackend
from polypseg.deploy.runtime import CachedExport, plan_auto_backend
from polypseg.hardware import NATIVE_BF16_ENV
from polypseg.inference import predictor as predictor_module
from polypseg.weights import resolve, save_pretrained

ALL = ["onnxruntime", "openvino", "torch"]


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


def test_load_backend_refuses_what_it_cannot_do(tmp_path, tiny_unet):
    pytest.importorskip("onnxruntime")  # the fast extra
    from polypseg.deploy.runtime import load_backend

    weights = save_pretrained(tiny_unet, tmp_path / "w")
    with pytest.raises(ValueError, match="int8"):
        load_backend(weights, "openvino", "int8")
    with pytest.raises(ValueError, match="backend"):
        load_backend(weights, "tensorrt")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match="export folder"):
        load_backend(tmp_path / "export", "torch")
