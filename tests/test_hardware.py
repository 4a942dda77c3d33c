"""Precision choice on CPUs with and without native bf16, on any machine (POLYPSEG_NATIVE_BF16 override).

Every path that chooses a precision by itself (``auto`` in training, the torch backend, OpenVINO's
export/backend, the demo) is run here with native bf16 present and absent. These tests carry the
``precision`` marker: ``make test`` runs them once more under each setting of the override, so a green run
on one kind of CPU means green on the other.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from polypseg.apps.cli import main
from polypseg.config import TrainConfig
from polypseg.deploy.backends import TorchBackend
from polypseg.hardware import NATIVE_BF16_ENV, auto_precision, cpu_flags, cpu_supports_bf16, resolve_precision
from polypseg.inference import Predictor
from polypseg.model import UNet
from polypseg.training import train
from polypseg.weights import save_pretrained

pytestmark = pytest.mark.precision

BOTH = pytest.mark.parametrize("native", [False, True], ids=["no-native-bf16", "native-bf16"])


@pytest.fixture
def set_native(monkeypatch):
    def set_(native: bool) -> None:
        monkeypatch.setenv(NATIVE_BF16_ENV, "1" if native else "0")

    return set_


@BOTH
def test_override_decides_native_bf16(native, set_native):
    set_native(native)
    assert cpu_supports_bf16() is native


@BOTH
def test_auto_precision_of_inference_follows_native_bf16(native, set_native):
    set_native(native)
    assert auto_precision("cpu") == ("bf16" if native else "32")
    assert TorchBackend(UNet(base_channels=2), "auto").precision == auto_precision("cpu")


def test_without_override_the_cpu_flags_decide(monkeypatch):
    monkeypatch.delenv(NATIVE_BF16_ENV, raising=False)
    flags = cpu_flags()
    assert cpu_supports_bf16() is (flags["avx512_bf16"] or flags["amx_bf16"])
    monkeypatch.setenv(NATIVE_BF16_ENV, "")
    assert cpu_supports_bf16() is (flags["avx512_bf16"] or flags["amx_bf16"])


@pytest.mark.parametrize("value", ["yes", "2", "true"])
def test_a_bad_override_is_an_error_naming_the_variable(value, monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, value)
    with pytest.raises(ValueError, match=NATIVE_BF16_ENV):
        cpu_supports_bf16()


@BOTH
def test_auto_training_precision(native, set_native):
    set_native(native)
    assert resolve_precision("auto", "cpu") == ("bf16-mixed" if native else "32-true")
    assert resolve_precision("32", "cpu") == "32-true"  # an explicit choice is never overridden


@BOTH
def test_auto_torch_backend(native, set_native, tiny_unet):
    set_native(native)
    backend = TorchBackend(tiny_unet, precision="auto")
    assert backend.precision == ("bf16" if native else "32")
    images = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    reference = TorchBackend(tiny_unet, precision="32")(images)
    logits = backend(images)
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
    assert (logits.argmax(1) == reference.argmax(1)).mean() > 0.9


@BOTH
def test_auto_training_runs_and_learns_something(native, set_native, synthetic_dataset, tmp_path):
    set_native(native)
    data = synthetic_dataset(sizes=[(64, 64)] * 12)
    config = TrainConfig(
        base_channels=4, image_size=64, split_sizes=[8, 2, 2], batch_size=4, epochs=2, lr=3e-3,
        precision="auto", accelerator="cpu", devices=1,
    )  # fmt: skip
    result = train(config, data, tmp_path / "run")
    with (tmp_path / "run" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(np.isfinite(float(r["train_loss"])) for r in rows)
    assert result.best_score is not None and (tmp_path / "run" / "best" / "model.safetensors").exists()


@BOTH
def test_auto_predictor_and_demo(native, set_native, tiny_unet, tmp_path, capsys):
    set_native(native)
    weights = save_pretrained(tiny_unet, tmp_path / "weights", metadata={"input_size": [64, 64]})
    predictor = Predictor.from_pretrained(weights)
    assert predictor.precision == ("bf16" if native else "32")
    prediction = predictor.predict(np.zeros((50, 70, 3), np.uint8))
    assert prediction.class_map.shape == (50, 70)
    # The demo's default path: the examples through `auto` precision.
    assert main(["demo", "--weights", str(weights), "--out", str(tmp_path / "demo")]) == 0
    assert "5 images segmented" in capsys.readouterr().out


@BOTH
def test_auto_openvino_precision(native, set_native, tiny_unet, tmp_path):
    pytest.importorskip("openvino")
    from polypseg.deploy.export import export_model
    from polypseg.deploy.runtime import load_backend

    set_native(native)
    weights = save_pretrained(tiny_unet, tmp_path / "weights", metadata={"input_size": [64, 64]})
    export_model(weights, "openvino", tmp_path / "export")
    backend = load_backend(tmp_path / "export", "openvino", "auto")
    assert backend.precision == ("bf16" if native else "32")
    logits = backend(np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32))
    assert np.isfinite(logits).all()


def test_bf16_autocast_changes_tiny_logits_so_tuned_tests_pin_fp32(tiny_unet):
    """Why precision-sensitive tests pin ``32``: bf16 moves logits enough to flip near-tied pixels."""
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        fp32 = tiny_unet(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = tiny_unet(images).float()
    assert not torch.equal(fp32, bf16)
