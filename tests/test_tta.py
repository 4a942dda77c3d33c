"""Flip test-time augmentation: exact flip equivariance, the average it computes, and its wiring into
the Predictor, ``polypseg predict --tta``, ``evaluate(tta=True)`` and ``polypseg evaluate --tta``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from polypseg.apps.cli import main
from polypseg.classes import NUM_CLASSES, classes_to_mask, mask_to_classes
from polypseg.config import TrainConfig
from polypseg.data import find_pairs, load_pairs
from polypseg.deploy.backends import TorchBackend
from polypseg.evaluation import evaluate
from polypseg.images import read_image, resize_image
from polypseg.inference import Predictor
from polypseg.losses import CombinedLoss
from polypseg.metrics import threshold_dice_curves
from polypseg.model import UNet
from polypseg.tta import FLIPS, flip_tta
from polypseg.weights import load_pretrained, save_pretrained

#: The three non-trivial flips of a (B, C, H, W) batch.
NON_TRIVIAL_FLIPS = [dims for dims in FLIPS if dims]


@pytest.fixture
def images() -> torch.Tensor:
    """Two random non-square images (H != W, so a transposed flip would show)."""
    return torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def varied_unet() -> UNet:
    """A random width-8 U-Net whose outputs vary from pixel to pixel (a fresh one is nearly constant).

    BatchNorm running variances of 0.1 amplify the activations; all three classes win somewhere, and
    the flips disagree on about a third of the pixels.
    """
    torch.manual_seed(0)
    model = UNet(base_channels=8).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.fill_(0.1)
    return model


@pytest.mark.parametrize("dims", NON_TRIVIAL_FLIPS)
def test_tta_is_exactly_flip_equivariant(varied_unet, images, dims):
    """TTA(flip(x)) == flip(TTA(x)) for a model that is not equivariant itself.

    Holds only if every flipped output is flipped back: forgetting one un-flip breaks it.
    """
    with torch.no_grad():
        # The model alone is far from equivariant, so the property below has teeth.
        assert not torch.allclose(varied_unet(images.flip(dims)), varied_unet(images).flip(dims), atol=1e-3)
        direct = flip_tta(varied_unet, images)
        of_flipped = flip_tta(varied_unet, images.flip(dims))
    torch.testing.assert_close(of_flipped, direct.flip(dims), rtol=1e-5, atol=1e-5)


def test_tta_without_unflipping_is_not_equivariant(varied_unet, images):
    """The equivariance test catches a forgotten un-flip (checked on a deliberately broken TTA)."""

    def broken_tta(x: torch.Tensor) -> torch.Tensor:
        probs = [varied_unet(x.flip(dims) if dims else x).softmax(1) for dims in FLIPS]  # no un-flip
        return torch.stack(probs).mean(0).log()

    with torch.no_grad():
        assert not torch.allclose(broken_tta(images.flip(-1)), broken_tta(images).flip(-1), atol=1e-3)


def test_tta_is_the_log_of_the_mean_softmax(varied_unet, images):
    with torch.no_grad():
        result = flip_tta(varied_unet, images)
        manual = (
            varied_unet(images).softmax(1)
            + varied_unet(images.flip(-1)).softmax(1).flip(-1)
            + varied_unet(images.flip(-2)).softmax(1).flip(-2)
            + varied_unet(images.flip(-2, -1)).softmax(1).flip(-2, -1)
        ) / 4
    assert result.shape == (2, NUM_CLASSES, 32, 48) and result.dtype == torch.float32
    torch.testing.assert_close(result.exp(), manual, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.softmax(1), manual, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result, manual.log(), rtol=1e-5, atol=1e-5)
    assert torch.equal(result.argmax(1), manual.argmax(1))


def test_tta_takes_numpy_backends(varied_unet, images):
    """A numpy-in/numpy-out backend (the interface of ONNX Runtime and OpenVINO) gets the same result."""
    backend = TorchBackend(varied_unet, precision="32")
    seen = []

    def numpy_backend(batch: np.ndarray) -> np.ndarray:
        assert isinstance(batch, np.ndarray) and batch.flags.c_contiguous
        seen.append(batch.copy())
        return backend(batch)

    result = flip_tta(numpy_backend, images.numpy())
    assert isinstance(result, np.ndarray) and result.dtype == np.float32
    assert len(seen) == 4 and np.array_equal(seen[1], images.numpy()[..., ::-1])
    with torch.no_grad():
        expected = flip_tta(varied_unet, images)
    np.testing.assert_allclose(result, expected.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_tta_on_onnxruntime_matches_torch(varied_unet, images, tmp_path):
    pytest.importorskip("onnxruntime")
    from polypseg.deploy.backends import OnnxRuntimeBackend
    from polypseg.deploy.export import export_onnx

    backend = OnnxRuntimeBackend(export_onnx(varied_unet, tmp_path / "model.onnx", image_size=64))
    with torch.no_grad():
        expected = flip_tta(varied_unet, images)
    np.testing.assert_allclose(flip_tta(backend, images.numpy()), expected.numpy(), rtol=1e-3, atol=1e-3)


def test_predictor_tta_uses_flip_tta(varied_unet):
    image = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    plain = Predictor(varied_unet, image_size=64, precision="32", min_polyp_fraction=0.0)
    with_tta = Predictor(varied_unet, image_size=64, precision="32", min_polyp_fraction=0.0, tta=True)
    pixels = (resize_image(image, (64, 64)).transpose(2, 0, 1)[None] / 255.0).astype(np.float32)
    expected = flip_tta(with_tta.backend, pixels).argmax(1)[0]
    assert np.array_equal(with_tta.predict(image).class_map, expected)
    assert not np.array_equal(plain.predict(image).class_map, expected)  # TTA changes this prediction


def test_cli_predict_tta_writes_the_tta_class_maps(varied_unet, synthetic_dataset, tmp_path, capsys):
    data = synthetic_dataset()
    paths = sorted((data / "images").glob("*.jpg"))
    weights = save_pretrained(varied_unet, tmp_path / "weights", metadata={"input_size": [64, 64]})
    out = tmp_path / "out"
    args = ["predict", "--weights", str(weights), str(data / "images"), "--precision", "32"]
    assert main([*args, "--tta", "--out", str(out)]) == 0
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert "4 images segmented" in capsys.readouterr().out
    backend = TorchBackend(load_pretrained(weights), precision="32")
    differs = False
    for path in paths:
        image = read_image(path)
        pixels = (resize_image(image, (64, 64)).transpose(2, 0, 1)[None] / 255.0).astype(np.float32)
        log_probs = torch.from_numpy(flip_tta(backend, pixels))
        full = F.interpolate(log_probs, size=image.shape[:2], mode="bilinear", align_corners=False)
        with Image.open(out / f"{path.stem}_classes.png") as written:
            class_map = np.asarray(written)
        assert np.array_equal(class_map, full[0].argmax(0).numpy())
        with Image.open(tmp_path / "plain" / f"{path.stem}_classes.png") as written:
            differs |= not np.array_equal(class_map, np.asarray(written))
    assert differs  # the flag reached the predictor


def test_evaluate_with_tta_scores_the_tta_prediction(varied_unet, synthetic_dataset):
    """Loss, class maps and the PraNet probability-map metric of evaluate(tta=True) are the TTA output's."""
    data = synthetic_dataset(sizes=[(64, 64)] * 3, mask_suffix=".png")
    pairs = load_pairs(find_pairs(data), image_size=64)
    kwargs = {"batch_size": 2, "boundary_width_px": 1, "precision": "32", "accelerator": "cpu"}
    plain = evaluate(varied_unet, pairs, **kwargs)
    result = evaluate(varied_unet, pairs, tta=True, **kwargs)
    images, targets = pairs.images.float() / 255.0, mask_to_classes(pairs.masks.bool(), 1).long()
    with torch.no_grad():
        log_probs = flip_tta(varied_unet.eval(), images)
    predicted = classes_to_mask(log_probs.argmax(1))
    assert [row["polyp_pixels_pred"] for row in result.rows] == predicted.sum((1, 2)).tolist()
    config = TrainConfig()
    loss = CombinedLoss(config.ce_weight, config.dice_weight)
    expected_loss = (2 * float(loss(log_probs[:2], targets[:2])) + float(loss(log_probs[2:], targets[2:]))) / 3
    assert result.metrics["loss"] == pytest.approx(expected_loss, abs=1e-5)
    pranet = threshold_dice_curves(log_probs.exp()[:, 1:].sum(1), classes_to_mask(targets)).mean(1)
    assert [row["polyp_mean_dice_pranet"] for row in result.rows] == pytest.approx(pranet.tolist(), abs=1e-3)
    assert result.metrics["polyp_mean_dice_pranet"] != plain.metrics["polyp_mean_dice_pranet"]
    assert result.metrics["loss"] != pytest.approx(plain.metrics["loss"], abs=1e-3)


def test_cli_evaluate_tta_records_it(varied_unet, synthetic_dataset, tmp_path, capsys):
    data = synthetic_dataset(sizes=[(64, 64)] * 3, mask_suffix=".png")
    weights = save_pretrained(varied_unet, tmp_path / "weights", metadata={"input_size": [64, 64]})
    args = ["evaluate", "--weights", str(weights), "--data", str(data), "--split", "all", "--batch-size", "2"]
    assert main([*args, "--tta", "--out", str(tmp_path / "on")]) == 0
    assert "flip test-time augmentation" in capsys.readouterr().out.splitlines()[0]
    assert main([*args, "--out", str(tmp_path / "off")]) == 0
    assert "flip test-time augmentation" not in capsys.readouterr().out
    on = json.loads((tmp_path / "on" / "metrics.json").read_text())
    off = json.loads((tmp_path / "off" / "metrics.json").read_text())
    assert on["tta"] is True and off["tta"] is False
    assert on["images"] == 3 and "polyp_mean_dice_pranet" in on["metrics"]
