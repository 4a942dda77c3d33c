"""Export to ONNX / OpenVINO (``polypseg.deploy.export``): the files, parity, int8, the export cache, and
predict on an export."""

from __future__ import annotations

import json

import numpy as np
import pytest

from polypseg.deploy.backends import OnnxRuntimeBackend, OpenVINOBackend, TorchBackend
from polypseg.deploy.export import INT8_OPTIONS, export_model, quantize_int8
from polypseg.evaluation.parity import export_parity
from polypseg.weights import load_pretrained, save_pretrained

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model exported to OpenVINO (with the ONNX file it converts from) and int8."""
    import torch

    from polypseg.model import UNet

    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    weights = save_pretrained(UNet(base_channels=4).eval(), root / "weights", metadata={"input_size": [64, 64]})
    rng = np.random.default_rng(0)
    images = []
    from PIL import Image

    for i in range(4):
        path = root / f"image_{i}.png"
        Image.fromarray(rng.integers(0, 256, (50 + 10 * i, 70, 3), dtype=np.uint8)).save(path)
        images.append(path)
    report = export_model(weights, "openvino", root / "out", calibration_images=images)
    report.parity = export_parity(weights, root / "out", "openvino", images, int8=True)
    return weights, root / "out", images, report


@pytest.mark.slow
def test_export_writes_models_and_config(exported):
    _, out, _, report = exported
    names = {path.name for path in report.files}
    assert {"model.onnx", "model.xml", "model.bin", "model_int8.xml", "model_int8.bin", "config.json"} <= names
    config = json.loads((out / "config.json").read_text())
    assert config["class_names"] == ["background", "polyp", "boundary"]
    assert config["export"]["format"] == "openvino" and config["export"]["int8"] is True
    assert config["export"]["int8_options"] == {**INT8_OPTIONS, "calibration_images": 4}
    assert config["input_range"] == [0.0, 1.0]


@pytest.mark.slow
def test_parity_is_reported_and_close(exported):
    _, _, _, report = exported
    by_name = {parity.name: parity for parity in report.parity}
    assert set(by_name) == {"onnxruntime fp32", "openvino fp32", "openvino int8"}
    for name in ("onnxruntime fp32", "openvino fp32"):
        assert by_name[name].max_abs_logit_difference < 1e-3
        assert by_name[name].argmax_agreement > 0.999
    assert by_name["openvino int8"].argmax_agreement > 0.9
    assert "class agreement" in str(by_name["openvino fp32"])


@pytest.mark.slow
def test_exported_models_take_any_batch_and_size(exported):
    weights, out, _, _ = exported
    batch = np.random.default_rng(1).random((3, 3, 48, 80), dtype=np.float32)
    reference = TorchBackend(load_pretrained(weights), precision="32")(batch)
    for backend in (OnnxRuntimeBackend(out), OpenVINOBackend(out, "32")):
        logits = backend(batch)
        assert logits.shape == (3, 3, 48, 80)
        np.testing.assert_allclose(logits, reference, atol=1e-3)
    assert OpenVINOBackend(out, "int8")(batch).shape == (3, 3, 48, 80)


@pytest.mark.slow
def test_export_refuses_to_overwrite(exported):
    weights, out, images, _ = exported
    with pytest.raises(FileExistsError, match="overwrite"):
        export_model(weights, "onnx", out)


def test_int8_uses_full_bias_correction_on_every_calibration_image(monkeypatch):
    """Fast bias correction left the bundled model at 99.0% class agreement with fp32; full: 99.8%."""
    nncf = pytest.importorskip("nncf")
    calls = []
    monkeypatch.setattr(nncf, "quantize", lambda model, dataset, **options: calls.append((dataset, options)) or model)
    calibration = np.zeros((3, 3, 32, 32), dtype=np.float32)
    assert quantize_int8("model", calibration) == "model"
    ((dataset, options),) = calls
    assert options == {
        "subset_size": 3,
        "preset": nncf.QuantizationPreset.MIXED,
        "fast_bias_correction": False,
    }
    assert INT8_OPTIONS == {"preset": "mixed", "fast_bias_correction": False}
    assert [item.shape for item in dataset.get_inference_data()] == [(1, 3, 32, 32)] * 3


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="format"):
        export_model(None, "tflite", tmp_path)


@pytest.mark.slow
def test_predictor_on_exported_backends_matches_torch(exported):
    from polypseg.images import read_image
    from polypseg.inference import Predictor

    weights, out, images, _ = exported
    arrays = [read_image(path) for path in images]
    reference = Predictor.from_pretrained(weights, precision="32").predict_batch(arrays)
    for backend in ("onnxruntime", "openvino"):
        predictor = Predictor.from_pretrained(out, backend=backend, precision="32")
        for expected, actual in zip(reference, predictor.predict_batch(arrays), strict=True):
            assert actual.class_map.shape == expected.class_map.shape
            assert (actual.class_map == expected.class_map).mean() > 0.999


@pytest.mark.slow
def test_load_backend_exports_once_and_caches(exported, tmp_path, monkeypatch):
    from polypseg.deploy.runtime import export_cache_dir, load_backend

    weights, _, _, _ = exported
    monkeypatch.setenv("POLYPSEG_CACHE", str(tmp_path / "cache"))
    backend = load_backend(weights, "onnxruntime")
    assert backend.name == "onnxruntime" and backend.auto_choice is None
    assert backend.export.fmt == "onnx" and backend.export.seconds > 0  # made now: its time is reported
    (cached,) = list(export_cache_dir().iterdir())
    assert backend.export.path == cached
    stamp = (cached / "model.onnx").stat().st_mtime_ns
    again = load_backend(weights, "onnxruntime")
    assert (cached / "model.onnx").stat().st_mtime_ns == stamp
    assert again.export.path == cached and again.export.seconds is None  # reused: no export time
    monkeypatch.setenv("POLYPSEG_NATIVE_BF16", "0")  # width 4 is small: ONNX Runtime fp32 without native bf16
    auto = load_backend(weights, "auto")
    assert (auto.name, auto.precision) == ("onnxruntime", "32") and auto.auto_choice.backend == "onnxruntime"
    monkeypatch.setenv("POLYPSEG_NATIVE_BF16", "1")
    auto = load_backend(weights, "auto")
    # width 8 is a small model: PyTorch bf16 leads on a CPU with native bf16 (measured at width 16)
    assert (auto.name, auto.precision) == ("torch", "bf16") and "native bf16" in auto.auto_choice.reason
    assert load_backend(weights, "openvino").name == "openvino"


@pytest.mark.slow
def test_cli_export_and_predict_with_a_backend(exported, tmp_path, capsys):
    from polypseg.apps.cli import main

    weights, _, images, _ = exported
    out = tmp_path / "onnx"
    assert (
        main(
            [
                "export",
                "--weights",
                str(weights),
                "--format",
                "onnx",
                "--out",
                str(out),
                "--parity-images",
                *map(str, images),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "wrote" in printed and "parity with PyTorch fp32, onnxruntime fp32" in printed
    code = main(
        ["predict", "--weights", str(out), "--backend", "onnxruntime", str(images[0]), "--out", str(tmp_path / "pred")]
    )
    assert code == 0 and (tmp_path / "pred" / "image_0_mask.png").exists()
