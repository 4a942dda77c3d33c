"""Issue 13: the card's binary sibling end to end, and the decoder concatenation order of foreign checkpoints."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from helpers import REAL_DATASET_DIR, REPO_ROOT, tiny_config
from polypseg.apps.cli import main
from polypseg.classes import logits_to_classes, polyp_probability
from polypseg.config import TrainConfig, load_config
from polypseg.inference import Predictor
from polypseg.losses import CombinedLoss, binary_combined_loss, binary_soft_dice
from polypseg.metrics import SegmentationMetrics, threshold_dice_curves
from polypseg.model import UNet
from polypseg.training import train
from polypseg.tta import flip_tta
from polypseg.weights import inspect_weights, load_pretrained, read_model_config, save_pretrained

# --- loss, class maps, probabilities -----------------------------------------------------------------


def test_binary_loss_by_hand():
    logits = torch.tensor([[[[0.0, 2.0], [-2.0, 0.0]]]])  # (1, 1, 2, 2)
    target = torch.tensor([[[1, 2], [0, 0]]])  # classes: 1 and 2 are polyp
    p = torch.sigmoid(logits[0, 0])
    truth = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    bce = -(truth * p.log() + (1 - truth) * (1 - p).log()).mean()
    dice = (2 * (p * truth).sum() + 1) / (p.sum() + truth.sum() + 1)
    assert math.isclose(float(binary_soft_dice(logits, target)), float(dice), rel_tol=1e-6)
    expected = 0.5 * bce + 0.5 * (1 - dice)
    assert math.isclose(float(binary_combined_loss(logits, target)), float(expected), rel_tol=1e-6)
    assert math.isclose(float(CombinedLoss()(logits, target)), float(expected), rel_tol=1e-6)
    three = torch.randn(1, 3, 2, 2)  # three channels: still the card's CE + multi-class Dice
    assert float(CombinedLoss()(three, target)) != float(binary_combined_loss(three[:, :1], target))


def test_binary_class_map_and_probability():
    logits = torch.tensor([[[-3.0, -0.1, 0.0, 0.5, 5.0]]])  # sigmoid(0.5) = 0.62
    assert logits_to_classes(logits).tolist() == [[0, 0, 1, 1, 1]]
    assert logits_to_classes(logits, threshold=0.6).tolist() == [[0, 0, 0, 1, 1]]
    assert torch.allclose(polyp_probability(logits), torch.sigmoid(logits[0]))
    three = torch.randn(2, 3, 4, 5)
    assert torch.allclose(polyp_probability(three), three.softmax(1)[:, 1:].sum(1))


def test_binary_flip_tta_averages_sigmoid_probabilities():
    model = UNet(num_classes=1, base_channels=4).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        averaged = flip_tta(model, images)
        flips = [(), (-1,), (-2,), (-2, -1)]
        outputs = [model(torch.flip(images, d)) for d in flips]
        back = [torch.flip(o, d) if d else o for o, d in zip(outputs, flips, strict=True)]
        expected = torch.sigmoid(torch.stack(back)).mean(0)
    assert averaged.shape == (2, 1, 32, 32)
    assert (torch.sigmoid(averaged) - expected).abs().max() < 1e-5


def test_pranet_dice_uses_the_sigmoid_probability():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 16, 16) * 3
    target = (torch.rand(2, 16, 16) > 0.5).long()
    metric = SegmentationMetrics(("background", "polyp"))
    metric.update(logits, target)
    scores = metric.compute()
    expected = threshold_dice_curves(torch.sigmoid(logits[:, 0]), target.bool()).mean()
    assert math.isclose(float(scores["polyp_mean_dice_pranet"]), float(expected), rel_tol=1e-6)
    pred = (torch.sigmoid(logits[:, 0]) >= 0.5).flatten(1)
    truth = target.bool().flatten(1)
    dice = (2 * (pred & truth).sum(1) / (pred.sum(1) + truth.sum(1))).mean()
    assert math.isclose(float(scores["polyp_dice"]), float(dice), rel_tol=1e-5)
    assert "dice_boundary" not in scores


def test_task_in_the_config():
    assert TrainConfig(task="binary").out_channels == 1
    assert TrainConfig(num_classes=1).task == "binary"  # implied
    assert TrainConfig().out_channels == 3
    with pytest.raises(ValueError, match="num_classes"):
        TrainConfig(task="binary", num_classes=3)
    with pytest.raises(ValueError, match="task"):
        TrainConfig(task="regression")
    seed = load_config(REPO_ROOT / "configs" / "seed-binary.yaml")
    card = load_config(REPO_ROOT / "configs" / "seed.yaml")
    assert seed.task == "binary" and seed.threshold == 0.5 and seed.monitor == "val_polyp_dice"
    same = ("base_channels", "lr", "batch_size", "epochs", "scheduler", "plateau_factor", "plateau_patience")
    assert all(getattr(seed, key) == getattr(card, key) for key in (*same, "min_lr", "split_sizes", "seed"))


# --- a tiny binary model trained on real images, through every command ---------------------------------


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory) -> Path:
    """A width-4 binary U-Net trained for a few steps on 12 real Kvasir-SEG images at 64x64."""
    if not (REAL_DATASET_DIR / "images").is_dir():
        pytest.skip(f"real Kvasir-SEG not found at {REAL_DATASET_DIR}")
    config = tiny_config(task="binary", max_images=12, monitor="val_polyp_dice")
    run = tmp_path_factory.mktemp("binary") / "run"
    train(config, REAL_DATASET_DIR, run)
    return run


def test_binary_training_writes_a_binary_model(binary_run):
    config = read_model_config(binary_run)
    assert config["task"] == "binary" and config["num_classes"] == 1 and config["decoder_concat"] == "skip-up"
    assert config["class_names"] == ["background", "polyp"] and config["threshold"] == 0.5
    with (binary_run / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(r["train_loss"] and r["val_polyp_dice"] for r in rows)
    assert all(not r["val_dice_boundary"] for r in rows)  # no boundary class
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    model = load_pretrained(binary_run)
    assert model.num_classes == 1 and model(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_binary_evaluate(binary_run, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", "--weights", str(binary_run), "--data", str(REAL_DATASET_DIR), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "2-class mean" in printed and "class boundary" not in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "binary" and metrics["threshold"] == 0.5 and metrics["images"] == 2
    assert 0.0 <= metrics["metrics"]["polyp_mean_dice_pranet"] <= 1.0
    # The per-image Dice is the binary Dice of the sigmoid mask, computed here independently.
    with (out / "per_image.csv").open(newline="") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert "dice_boundary" not in next(iter(rows.values()))
    model = load_pretrained(binary_run)
    from polypseg.data import find_pairs, load_pairs

    by_name = {s.name: s for s in find_pairs(REAL_DATASET_DIR)}
    pairs = load_pairs([by_name[name] for name in rows], 64)
    with torch.no_grad():
        pred = torch.sigmoid(model(pairs.images.float() / 255.0))[:, 0] >= 0.5
    truth = pairs.masks.bool()
    for index, name in enumerate(rows):
        tp = (pred[index] & truth[index]).sum()
        denominator = pred[index].sum() + truth[index].sum()
        dice = float(2 * tp / denominator) if denominator else 1.0
        assert math.isclose(float(rows[name]["polyp_dice"]), dice, abs_tol=1e-5)


def test_binary_predict_and_threshold(binary_run, tmp_path, capsys):
    image = sorted((REAL_DATASET_DIR / "images").glob("*.jpg"))[0]
    outputs = {}
    for threshold in ("0.5", "0.9"):
        out = tmp_path / threshold
        args = ["predict", str(image), "--weights", str(binary_run), "--out", str(out), "--threshold", threshold]
        assert main(args) == 0
        classes = np.asarray(Image.open(out / f"{image.stem}_classes.png"))
        mask = np.asarray(Image.open(out / f"{image.stem}_mask.png"))
        assert set(np.unique(classes)) <= {0, 1}
        assert np.array_equal(mask > 0, classes == 1)
        assert (out / f"{image.stem}_overlay.jpg").exists()
        with (out / "predictions.csv").open(newline="") as handle:
            row = next(csv.DictReader(handle))
        assert math.isclose(float(row["polyp_area_percent"]), 100 * (classes == 1).mean(), abs_tol=1e-3)
        outputs[threshold] = classes
    # The class map is the sigmoid of the full-resolution logit at the threshold.
    predictor = Predictor.from_pretrained(binary_run, precision="32", threshold=0.5)
    from polypseg.images import read_image

    assert np.array_equal(predictor.predict(read_image(image)).class_map, outputs["0.5"])
    assert (outputs["0.9"] <= outputs["0.5"]).all()  # a higher threshold never adds polyp pixels


def test_binary_export_has_parity(binary_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from polypseg.deploy.export import export_model
    from polypseg.evaluation.parity import export_parity

    image = sorted((REAL_DATASET_DIR / "images").glob("*.jpg"))[0]
    export_model(binary_run, "onnx", tmp_path / "onnx")
    config = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert config["task"] == "binary" and config["num_classes"] == 1
    (parity,) = export_parity(binary_run, tmp_path / "onnx", "onnx", images=[image])
    assert parity.max_abs_logit_difference < 1e-3 and parity.argmax_agreement > 0.999
    pixels = np.asarray(Image.open(image))
    torch_map = Predictor.from_pretrained(binary_run, precision="32").predict(pixels)
    onnx_map = Predictor.from_pretrained(tmp_path / "onnx", backend="onnxruntime").predict(pixels)
    assert (torch_map.class_map == onnx_map.class_map).mean() > 0.999


def test_binary_demo_and_card(binary_run, tmp_path, capsys):
    assert main(["demo", "--weights", str(binary_run), "--out", str(tmp_path / "demo")]) == 0
    assert len(list((tmp_path / "demo").glob("*_classes.png"))) == 5
    from polypseg.publish import model_card

    card = model_card(binary_run)
    assert "binary variant" in card and "sigmoid" in card and "| 2 | boundary" not in card
    assert "decoder_concat='skip-up'" in card and "num_classes=1" in card


def test_binary_web_demo_segments(binary_run):
    pytest.importorskip("gradio")
    from polypseg.apps.webpage import segment_paths

    predictor = Predictor.from_pretrained(binary_run, precision="32")
    examples = sorted((REAL_DATASET_DIR / "images").glob("*.jpg"))[:2]
    items, errors = segment_paths(predictor, [str(p) for p in examples])
    assert not errors and len(items) == 2
    assert all(set(np.unique(item.prediction.class_map)) <= {0, 1} for item in items)


# --- foreign checkpoints and `polypseg inspect` ---------------------------------------------------------


def _fit_tiny_unet(data: Path, decoder_concat: str, seed: int = 0) -> UNet:
    """A width-4 binary U-Net fitted to the synthetic polyps of ``data`` (64x64) until it segments them."""
    from polypseg.data import find_pairs, load_pairs

    pairs = load_pairs(find_pairs(data), 64)
    images, masks = pairs.images.float() / 255.0, pairs.masks.bool()
    torch.manual_seed(seed)
    model = UNet(num_classes=1, base_channels=4, decoder_concat=decoder_concat)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimiser.zero_grad()
        loss = binary_combined_loss(model(images), masks.long())
        loss.backward()
        optimiser.step()
    return model.eval()


def _small_polyps(root: Path, count: int = 8) -> Path:
    """``count`` 64x64 images of dark noise with one brighter ellipse (radii 8-16 px) and its 0/255 mask."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows, cols = np.mgrid[0:64, 0:64]
    for index in range(count):
        (cy, cx), (ry, rx) = rng.uniform(20, 44, 2), rng.uniform(8, 16, 2)
        mask = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
        image = rng.integers(0, 120, (64, 64, 3), dtype=np.uint8)
        image[mask] += 100
        Image.fromarray(image).save(root / "images" / f"s{index}.jpg")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"s{index}.png")
    return root


def test_inspect_picks_the_order_of_trained_weights(tmp_path, capsys):
    data = _small_polyps(tmp_path / "data")
    model = _fit_tiny_unet(data, "up-skip")
    # A foreign file: only tensors, no config.json; structure says binary, width 4; the order is unknowable.
    path = tmp_path / "foreign" / "model.safetensors"
    path.parent.mkdir()
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    info = inspect_weights(path)
    assert info.task == "binary" and info.concat_source == "assumed"
    # A foreign config.json that gives the input size it was trained at (64) but not the order.
    (path.parent / "config.json").write_text(json.dumps({"input_size": [64, 64]}))
    assert inspect_weights(path).concat_source == "assumed"

    assert main(["inspect", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "task: binary" in printed and "width (base_channels): 4" in printed
    assert "decoder concat: skip-up (assumed" in printed and "--data" in printed

    assert main(["inspect", str(path), "--data", str(data)]) == 0
    printed = capsys.readouterr().out
    dice = {
        order: float(line.split(": ")[-1])
        for line in printed.splitlines()
        for order in ("skip-up", "up-skip")
        if line.startswith(f"polyp Dice with {order} ")
    }
    # Measured here: about 1.00 with its own order, 0.18 with the other (fitted for 150 steps; after 60
    # steps the fit was still loose, 0.39-0.49 against 0.18).
    assert dice["up-skip"] > 0.8 and dice["up-skip"] > dice["skip-up"] + 0.4, printed
    assert "fits: up-skip" in printed and "--decoder-concat up-skip" in printed
    loaded = load_pretrained(path, decoder_concat="up-skip")
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(images), model(images), atol=1e-5)


def test_decoder_concat_flag_reaches_predict(synthetic_dataset, tmp_path):
    data = synthetic_dataset(sizes=[(64, 64)] * 4, mask_suffix=".png")
    torch.manual_seed(1)
    model = UNet(num_classes=1, base_channels=4, decoder_concat="up-skip").eval()
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    image = sorted((data / "images").iterdir())[0]
    for order in ("up-skip", "skip-up"):
        out = tmp_path / order
        assert main(["predict", str(image), "--weights", str(path), "--decoder-concat", order, "--out", str(out)]) == 0
    reference = Predictor(model, image_size=256, precision="32").predict(np.asarray(Image.open(image)))
    written = np.asarray(Image.open(tmp_path / "up-skip" / f"{image.stem}_classes.png"))
    assert np.array_equal(written, reference.class_map)


def test_exported_order_is_kept_and_a_different_one_refused(tmp_path):
    pytest.importorskip("onnxruntime")
    from polypseg.deploy.export import export_model
    from polypseg.deploy.runtime import load_backend

    torch.manual_seed(2)
    model = UNet(num_classes=3, base_channels=4, decoder_concat="up-skip").eval()
    folder = save_pretrained(model, tmp_path / "w")
    export_model(folder, "onnx", tmp_path / "onnx")
    assert json.loads((tmp_path / "onnx" / "config.json").read_text())["decoder_concat"] == "up-skip"
    backend = load_backend(tmp_path / "onnx", "onnxruntime")
    images = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        assert np.abs(backend(images) - model(torch.from_numpy(images)).numpy()).max() < 1e-4
    with pytest.raises(ValueError, match="built in"):
        load_backend(tmp_path / "onnx", "onnxruntime", decoder_concat="skip-up")


# --- the threshold recorded with the weights is the default ------------------------------------------


@pytest.fixture
def recorded_07(tmp_path) -> Path:
    """Binary weights whose config.json records threshold 0.7 and whose polyp probability is 0.6 everywhere.

    So the recorded threshold (0.7) finds no polyp pixel and 0.5 makes every pixel polyp.
    """
    torch.manual_seed(0)
    model = UNet(num_classes=1, base_channels=4).eval()
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.fill_(math.log(0.6 / 0.4))
    return save_pretrained(model, tmp_path / "recorded", metadata={"input_size": [64, 64], "threshold": 0.7})


def test_the_recorded_threshold_is_the_library_default(recorded_07):
    from polypseg.evaluation import evaluation_predictor
    from polypseg.inference import decision_threshold
    from polypseg.weights import resolve

    weights = resolve(recorded_07)
    assert decision_threshold(weights) == 0.7 and decision_threshold(weights, 0.5) == 0.5
    assert decision_threshold(resolve(None)) == 0.5  # the bundled model records none
    assert Predictor.from_pretrained(recorded_07, precision="32").threshold == 0.7
    assert Predictor.from_pretrained(recorded_07, precision="32", threshold=0.5).threshold == 0.5
    assert (
        evaluation_predictor(weights).threshold == 0.7 and evaluation_predictor(weights, threshold=0.2).threshold == 0.2
    )
    image = np.zeros((40, 50, 3), np.uint8)
    assert not Predictor.from_pretrained(recorded_07, precision="32").predict(image).polyp_mask.any()


@pytest.mark.parametrize("recorded", [1.5, -0.1, "0.7", True, None])
def test_a_recorded_threshold_that_is_not_a_fraction_names_the_config(recorded_07, recorded):
    """config.json is checked when read: a bad recorded threshold is refused, never silently replaced by 0.5."""
    from polypseg.errors import UsageError, WeightsError
    from polypseg.inference import decision_threshold
    from polypseg.weights import resolve

    assert decision_threshold(resolve(recorded_07), 0.4) == 0.4  # an explicit one wins over the recorded 0.7
    with pytest.raises(UsageError, match="threshold must be a number from 0 to 1"):
        decision_threshold(resolve(recorded_07), 2.0)
    config = json.loads((recorded_07 / "config.json").read_text())
    (recorded_07 / "config.json").write_text(json.dumps({**config, "threshold": recorded}))
    with pytest.raises(WeightsError, match=r"config\.json: 'threshold' must be a number from 0 to 1, got "):
        resolve(recorded_07)


def test_predict_and_evaluate_use_the_recorded_threshold(recorded_07, synthetic_dataset, tmp_path):
    data = synthetic_dataset(sizes=[(64, 64), (48, 40)], mask_suffix=".png")
    image = sorted((data / "images").iterdir())[0]
    polyp = {}
    for name, flags in (("recorded", []), ("0.7", ["--threshold", "0.7"]), ("0.5", ["--threshold", "0.5"])):
        out = tmp_path / "predict" / name
        assert main(["predict", str(image), "--weights", str(recorded_07), "--out", str(out), *flags]) == 0
        polyp[name] = np.asarray(Image.open(out / f"{image.stem}_mask.png")) > 0
    assert not polyp["recorded"].any() and np.array_equal(polyp["recorded"], polyp["0.7"])
    assert polyp["0.5"].all()

    for name, flags, expected in (("recorded", [], 0.7), ("0.5", ["--threshold", "0.5"], 0.5)):
        out = tmp_path / "evaluate" / name
        args = ["evaluate", "--weights", str(recorded_07), "--data", str(data), "--split", "all", "--out", str(out)]
        assert main([*args, *flags]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["task"] == "binary" and metrics["threshold"] == expected
        with (out / "per_image.csv").open(newline="") as handle:
            predicted = [int(row["polyp_pixels_pred"]) for row in csv.DictReader(handle)]
        assert predicted == ([0, 0] if expected == 0.7 else [64 * 64, 64 * 64])


def test_demo_uses_the_recorded_threshold(recorded_07, tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--weights", str(recorded_07), "--out", str(out)]) == 0
    masks = sorted(out.glob("*_mask.png"))
    assert len(masks) == 5 and not any((np.asarray(Image.open(mask)) > 0).any() for mask in masks)


def test_web_demo_uses_the_recorded_threshold(recorded_07, monkeypatch):
    pytest.importorskip("gradio")
    from polypseg.apps import webdemo

    class Page:
        def launch(self, **options: object) -> None:
            pass

    built = []
    monkeypatch.setattr(webdemo, "build_demo", lambda predictor, **options: built.append(predictor) or Page())
    webdemo.serve(recorded_07, block=False)
    webdemo.serve(recorded_07, block=False, threshold=0.5)
    assert [predictor.threshold for predictor in built] == [0.7, 0.5]
