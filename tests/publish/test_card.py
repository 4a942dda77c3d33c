"""Model cards: written from a run or weights folder and a metrics.json; every number comes from those files."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from polypseg.apps.cli import main
from polypseg.config import TrainConfig, save_config
from polypseg.data import save_splits
from polypseg.publish.card import model_card
from polypseg.weights import save_pretrained

METRICS = {
    "dice_background": 0.973312,
    "iou_background": 0.947981,
    "dice_polyp": 0.812345,
    "iou_polyp": 0.683777,
    "dice_boundary": 0.401234,
    "iou_boundary": 0.250964,
    "mean_dice": 0.728964,
    "mean_iou": 0.627574,
    "polyp_dice": 0.834567,
    "polyp_iou": 0.745678,
    "polyp_precision": 0.856789,
    "polyp_recall": 0.867891,
    "polyp_dice_dataset": 0.878912,
    "polyp_iou_dataset": 0.789123,
    "polyp_precision_dataset": 0.891234,
    "polyp_recall_dataset": 0.866543,
    "loss": 0.412345,
}
VAL_METRICS = {"val_loss": 0.5, "val_dice": 0.61234, "val_polyp_dice": 0.70123}


@pytest.fixture
def run_dir(tiny_unet, tmp_path) -> Path:
    """A run folder as ``polypseg train`` leaves it: config.yaml, splits.json, metrics.csv, best/."""
    run = tmp_path / "runs" / "tiny"
    config = TrainConfig(base_channels=8, epochs=3, seed=7, split_sizes=[6, 2, 2])
    save_config(config, run / "config.yaml")
    names = [f"sample_{i:03d}" for i in range(10)]
    save_splits({"train": names[:6], "val": names[6:8], "test": names[8:]}, run / "splits.json")
    with (run / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", "val_dice", "seconds"])
        writer.writeheader()
        writer.writerows({"epoch": e, "val_dice": 0.5 + e / 100, "seconds": 30.0} for e in range(3))
    training = {"config": config.to_dict(), "train_images": 6, "val_images": 2, "epoch": 2, "val_metrics": VAL_METRICS}
    save_pretrained(tiny_unet, run / "best", metadata={"training": training})
    return run


@pytest.fixture
def metrics_json(tmp_path) -> Path:
    path = tmp_path / "reports" / "metrics.json"
    path.parent.mkdir()
    report = {
        "weights": "/somewhere/runs/tiny/best",
        "split": "test",
        "split_source": "/somewhere/runs/tiny/splits.json",
        "images": 2,
        "image_size": 256,
        "metrics": METRICS,
    }
    path.write_text(json.dumps(report))
    return path


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def _section(card: str, title: str) -> str:
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_card_metadata_and_model_index(run_dir, metrics_json):
    card = model_card(run_dir, metrics_json, repo_id="someone/polyp-unet")
    meta = _front_matter(card)
    assert meta["license"] == "other" and "kvasir-seg" in meta["license_link"]
    assert meta["datasets"] == ["kvasir-seg"] and meta["pipeline_tag"] == "image-segmentation"
    assert {"image-segmentation", "medical-imaging", "polyp-segmentation", "pytorch", "safetensors"} <= set(
        meta["tags"]
    )
    # huggingface_hub parses the model-index back into evaluation results with the file's values.
    results = ModelCard(card).data.eval_results
    values = {result.metric_name: result.metric_value for result in results}
    assert values["Dice (3-class mean, background included)"] == round(METRICS["mean_dice"], 4)
    assert values["Polyp Dice (mean over images)"] == round(METRICS["polyp_dice"], 4)
    assert values["Polyp Dice (dataset-level)"] == round(METRICS["polyp_dice_dataset"], 4)
    assert {result.dataset_split for result in results} == {"test"}
    assert "# polyp-unet\n" in card and 'load_pretrained("hf://someone/polyp-unet")' in card


def test_evaluation_numbers_come_only_from_metrics_json(run_dir, metrics_json):
    evaluation = _section(model_card(run_dir, metrics_json), "Evaluation")
    table = evaluation.split("| metric | value |", 1)[1]
    shown = {float(value) for value in re.findall(r"\| (\d+\.\d{4}) \|", table)}
    assert shown == {round(value, 4) for value in METRICS.values()}
    assert "| Dice, 3-class mean (background included; the model card's figure) | 0.7290 |" in evaluation
    assert "| Dice, class 2 boundary | 0.4012 |" in evaluation
    assert "test** split (2 images; split from splits.json)" in evaluation
    assert "/somewhere" not in evaluation  # local paths stay local


def test_card_without_metrics_has_no_model_index(run_dir):
    card = model_card(run_dir)
    assert "model-index" not in _front_matter(card)
    assert "No test-set evaluation was supplied" in _section(card, "Evaluation")
    assert not re.search(r"\| 0\.\d{4} \|", _section(card, "Evaluation"))


def test_card_describes_use_classes_training_split_and_citations(run_dir, tiny_unet):
    card = model_card(run_dir)
    use = _section(card, "Intended use and limitations")
    assert "not a medical device" in use and "must not be used for diagnosis" in use
    classes = _section(card, "Classes")
    assert "| 0 | background |" in classes and "| 1 | polyp |" in classes and "| 2 | boundary |" in classes
    assert "Classes 1 and 2 together are exactly the annotated polyp mask" in classes
    training = _section(card, "Training")
    assert "| epochs | 3 |" in training and "| seed | 7 |" in training
    assert "Best validation epoch: 2 (counting from 0) of 3 logged" in training
    assert "| val_dice | 0.6123 |" in training
    assert "1.5 minutes" in training  # 3 epochs x 30 s from metrics.csv
    split = _section(card, "Data split")
    assert "| 6 | 2 | 2 |" in split and "splits.json" in split
    assert "doi       = {10.1007/978-3-030-37734-2_37}" in card and "Ronneberger" in card
    parameters = sum(p.numel() for p in tiny_unet.parameters())
    assert f"; {parameters:,} parameters |" in _section(card, "Model")


def test_card_of_a_weights_folder_and_of_a_bare_file(tiny_unet, tmp_path):
    folder = save_pretrained(tiny_unet, tmp_path / "weights")
    card = model_card(folder)
    assert "## Data split" not in card and "records no training configuration" in card
    assert "U-Net of width 8" in card
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    card = model_card(bare / "model.safetensors")
    assert "how it was trained is not recorded" in card and "plain snippet" not in card
    assert _front_matter(card)["license"] == "other"


def test_cli_card_writes_refuses_to_overwrite_and_prints(run_dir, metrics_json, tmp_path, capsys):
    out = tmp_path / "README.md"
    args = ["card", "--weights", str(run_dir), "--metrics", str(metrics_json), "--out", str(out)]
    assert main(args) == 0
    assert out.read_text().startswith("---\n") and "0.7290" in out.read_text()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err
    assert main(["card", "--weights", str(run_dir)]) == 0
    assert capsys.readouterr().out.startswith("---\n")


@pytest.mark.parametrize("content", ["not json", '{"split": "test"}', "[1, 2]"])
def test_cli_card_bad_metrics_is_one_line(run_dir, tmp_path, capsys, content):
    bad = tmp_path / "metrics.json"
    bad.write_text(content)
    assert main(["card", "--weights", str(run_dir), "--metrics", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "metrics.json" in err


@pytest.mark.parametrize("content", [b'{"metrics": {}, "split": "\xff"}', b'{"metrics": ' + b"1" * 5000 + b"}"])
def test_cli_card_metrics_json_json_cannot_read_is_one_line(run_dir, tmp_path, capsys, content):
    bad = tmp_path / "metrics.json"
    bad.write_bytes(content)  # not UTF-8; an integer over Python's 4300 digits (a ValueError of json)
    assert main(["card", "--weights", str(run_dir), "--metrics", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}: cannot read JSON" in err, err


@pytest.mark.parametrize(
    "name, content",
    [
        ("config.yaml", b"seed: 7\nrun_id: 2020-13-45\n"),  # a ValueError of PyYAML
        ("metrics.csv", b"epoch,seconds\n0,\xff\n"),
        ("splits.json", b"\xff"),
    ],
)
def test_cli_card_of_a_run_with_a_damaged_file_is_one_line(tiny_unet, tmp_path, capsys, name, content):
    run = tmp_path / "run"
    save_pretrained(tiny_unet, run / "best")  # no training record: the card reads the run's config.yaml
    save_config(TrainConfig(base_channels=8), run / "config.yaml")
    (run / name).write_bytes(content)
    assert main(["card", "--weights", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{run / name}: cannot read" in err, err


def test_plain_snippet_in_the_card_runs(run_dir, tiny_unet, monkeypatch):
    usage = _section(model_card(run_dir), "How to use")
    snippet = usage.split("plain snippet works too:\n\n```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(run_dir / "best")
    namespace: dict = {}
    exec(snippet, namespace)
    loaded = namespace["model"].state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in tiny_unet.state_dict().items())


def test_card_says_when_the_scores_used_tta(run_dir, metrics_json):
    assert "test-time augmentation" not in _section(model_card(run_dir, metrics_json), "Evaluation")
    report = json.loads(metrics_json.read_text())
    metrics_json.write_text(json.dumps({**report, "tta": True}))
    assert "with flip test-time augmentation" in _section(model_card(run_dir, metrics_json), "Evaluation")
