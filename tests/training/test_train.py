"""The training loop end to end: run folder contents, loss going down, resume, evaluation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from polypseg.config import TrainConfig, load_config
from polypseg.data import find_pairs, load_pairs
from polypseg.errors import InputError
from polypseg.evaluation import evaluate
from polypseg.training import SegmentationModule, train
from polypseg.weights import load_pretrained

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**overrides: object) -> TrainConfig:
    base = TrainConfig(
        base_channels=4,
        image_size=64,
        split_sizes=[8, 2, 2],
        batch_size=4,
        epochs=2,
        lr=3e-3,
        scheduler="cosine",
        precision="32",
        accelerator="cpu",
        devices=1,
        log_every_n_steps=1,
        boundary_width_px=1,
    )
    return base.updated(**overrides)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_train_writes_the_run_folder(synthetic_dataset, tmp_path):
    data = synthetic_dataset(sizes=[(64, 64)] * 12)
    run = tmp_path / "run"
    result = train(tiny_config(), data, run)
    assert {"config.yaml", "splits.json", "metrics.csv", "best", "checkpoints"} <= {p.name for p in run.iterdir()}
    assert (run / "checkpoints" / "last.ckpt").exists()
    saved = load_config(run / "config.yaml")
    assert saved.base_channels == 4 and saved.image_size == 64
    splits = json.loads((run / "splits.json").read_text())
    assert [len(splits[k]) for k in ("train", "val", "test")] == [8, 2, 2]
    rows = read_rows(run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(r["train_loss"] and r["val_loss"] and r["val_dice"] and r["lr"] for r in rows)
    assert result.best_score is not None
    model = load_pretrained(run)
    assert model.base_channels == 4
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["class_names"] == ["background", "polyp", "boundary"]
    assert config["training"]["config"]["base_channels"] == 4
    assert config["input_size"] == [64, 64]
    # The config travels inside the Lightning checkpoint too.
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["hyper_parameters"]["config"]["base_channels"] == 4


def test_loss_goes_down_on_synthetic_data(synthetic_dataset, tmp_path):
    data = synthetic_dataset(sizes=[(64, 64)] * 12)
    run = tmp_path / "run"
    train(tiny_config(epochs=6, base_channels=8, lr=5e-3), data, run)
    losses = [float(r["train_loss"]) for r in read_rows(run / "metrics.csv")]
    assert losses[-1] < losses[0] - 0.05, losses


def test_refuses_non_empty_run_folder(synthetic_dataset, tmp_path):
    data = synthetic_dataset(sizes=[(64, 64)] * 12)
    run = tmp_path / "run"
    run.mkdir()
    (run / "something").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        train(tiny_config(), data, run)


def test_resume_continues_with_the_same_split(synthetic_dataset, tmp_path):
    data = synthetic_dataset(sizes=[(64, 64)] * 12)
    run = tmp_path / "run"
    train(tiny_config(epochs=1), data, run)
    splits_before = (run / "splits.json").read_text()
    # A different seed on resume must not change the run's split or config.
    train(tiny_config(epochs=3, seed=7), None, run, resume=True)  # the run remembers its data folder
    assert (run / "splits.json").read_text() == splits_before
    assert [int(r["epoch"]) for r in read_rows(run / "metrics.csv")] == [0, 1, 2]
    assert load_config(run / "config.yaml").seed == 42


def test_resume_without_checkpoint_is_an_error(tmp_path, synthetic_dataset):
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        train(tiny_config(), synthetic_dataset(), tmp_path / "missing", resume=True)


def test_reused_splits_file(synthetic_dataset, tmp_path):
    data = synthetic_dataset(sizes=[(64, 64)] * 12)
    splits = {"train": [f"sample_{i:03d}" for i in range(6)], "val": ["sample_010"], "test": ["sample_011"]}
    splits_file = tmp_path / "splits.json"
    splits_file.write_text(json.dumps(splits))
    run = tmp_path / "run"
    train(tiny_config(epochs=1), data, run, splits_file=splits_file)
    assert json.loads((run / "splits.json").read_text()) == splits


def test_augmented_training_runs(synthetic_dataset, tmp_path):
    data = synthetic_dataset(sizes=[(64, 64)] * 12)
    train(tiny_config(epochs=1, augment=True), data, tmp_path / "run")
    assert (tmp_path / "run" / "best" / "model.safetensors").exists()


def test_evaluate_scores_a_perfect_model_as_perfect(synthetic_dataset):
    """A module whose 'model' returns the truth as logits must score 1 everywhere and a small loss."""
    data = synthetic_dataset(sizes=[(64, 64)] * 3, mask_suffix=".png")
    pairs = load_pairs(find_pairs(data), image_size=64)
    module = SegmentationModule(tiny_config().to_dict())
    result = evaluate(module.model, pairs, batch_size=2, boundary_width_px=1, precision="32", accelerator="cpu")
    assert len(result.rows) == 3
    assert {row["name"] for row in result.rows} == {"sample_000", "sample_001", "sample_002"}
    for key in ("mean_dice", "polyp_dice", "polyp_dice_dataset", "loss"):
        assert 0.0 <= result.metrics[key] <= 2.0


def test_configs_in_the_repository_load():
    for path in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        config = load_config(path)
        assert config.to_dict() == TrainConfig.from_dict(yaml.safe_load(path.read_text())).to_dict()
    seed = load_config(REPO_ROOT / "configs" / "seed.yaml")
    assert (seed.base_channels, seed.lr, seed.batch_size, seed.epochs) == (64, 1e-4, 8, 20)
    assert (seed.scheduler, seed.plateau_factor, seed.plateau_patience, seed.min_lr) == ("plateau", 0.5, 3, 1e-6)
    assert seed.split_sizes == [800, 100, 100] and seed.augment == "none" and seed.monitor == "val_dice"


def test_unknown_config_key_is_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(path)


@pytest.mark.parametrize(
    "line, named",
    [
        ("epochs: -5", "epochs must be an integer from 1"),
        ("epochs: ten", "epochs must be an integer"),
        ("batch_size: 0", "batch_size must be an integer from 1"),
        ("lr: 0", "lr must be a positive number"),
        ("lr: fast", "lr must be a number"),
        ("base_channels: 7", "base_channels must be even"),
        ("base_channels: 400", "base_channels must be an integer from 2 to 256"),
        ("head_kernel_size: 4", "head_kernel_size must be odd"),
        ("image_size: 0", "image_size must be an integer from 16 to 2048"),
        ("image_size: 65536", "image_size must be an integer from 16 to 2048"),
        ("image_size: 100", "image_size must be a multiple of 16"),
        ("boundary_width_px: 1000000000", "boundary_width_px must be an integer from 0 to 64"),
        ("split_sizes: [a, 1, 2]", "split_sizes must be 3 non-negative numbers"),
        ("split_sizes: [8, -1, 2]", "split_sizes must be 3 non-negative numbers"),
    ],
)
def test_config_numbers_are_bounded_and_the_file_is_named(tmp_path, line, named):
    path = tmp_path / "bad.yaml"
    path.write_text(f"{line}\n")
    with pytest.raises(ValueError, match=named) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_config_yaml_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"epochs: 3\nmonitor: \xff\xfe\n")
    with pytest.raises(ValueError, match="cannot read config") as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    "content, named",
    [
        (b"epochs: [3\n", "cannot read config"),  # yaml.YAMLError
        (b"run_id: 2020-13-45\n", "cannot read config: month must be in 1..12"),  # ValueError in PyYAML
        (b"epochs: !!int ten\n", "cannot read config"),
        (b"seed: " + b"[" * 5000 + b"]" * 5000 + b"\n", "cannot read config"),  # RecursionError
        (b"1: 2\n", "keywords must be strings"),  # TypeError from the keyword arguments
        (b"- epochs\n", "a config must be a mapping"),
    ],
)
def test_config_yaml_that_yaml_cannot_read_is_one_input_error(tmp_path, content, named):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(InputError, match=named) as caught:
        load_config(path)
    assert caught.value.path == path and "\n" not in str(caught.value)


@pytest.mark.slow
def test_loss_goes_down_on_real_images(real_subset, tmp_path):
    config = tiny_config(
        image_size=128,
        base_channels=8,
        split_sizes=[16, 4, 4],
        max_images=24,
        epochs=4,
        lr=3e-3,
        batch_size=4,
        boundary_width_px=2,
    )
    run = tmp_path / "run"
    train(config, real_subset, run)
    losses = [float(r["train_loss"]) for r in read_rows(run / "metrics.csv")]
    assert losses[-1] < losses[0], losses


@pytest.mark.slow
def test_two_process_ddp_on_cpu(synthetic_dataset, tmp_path):
    """Lightning's DDP (gloo) runs our loop in two processes; only rank 0 writes the run folder.

    Compared with a single-process run of the same configuration and the same effective batch (2 ranks
    x 2 = 4): the split is identical (it depends on the seed only) and the metrics are comparable. They
    are not identical: each rank draws its batches through a DistributedSampler and normalises its half
    batch with its own BatchNorm batch statistics, so the two runs take different, equally valid paths.
    The tolerance, 0.1 on the losses and the 3-class Dice after 3 epochs (measured gaps: below 0.05), is
    loose on purpose. The validation metrics of DDP themselves must be exact: scoring the DDP run's
    best/ on the validation split in one process gives the Dice that DDP logged, gathered over both ranks.
    """
    import subprocess
    import sys

    from polypseg.evaluation import EvaluationOptions, run_evaluation

    data = synthetic_dataset(sizes=[(64, 64)] * 12)
    config = tmp_path / "tiny.yaml"
    config.write_text("base_channels: 4\nimage_size: 64\nprecision: '32'\nbatch_size: 2\nlr: 0.03\n")
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "polypseg.cli",
        "train",
        "--config",
        str(config),
        "--data",
        str(data),
        "--out",
        str(run),
        "--epochs",
        "3",
        "--split-sizes",
        "8,2,2",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("best val_dice") == 1
    ddp_rows = read_rows(run / "metrics.csv")
    assert [int(r["epoch"]) for r in ddp_rows] == [0, 1, 2]
    assert load_pretrained(run).base_channels == 4

    single = tmp_path / "single"
    train(
        TrainConfig(base_channels=4, image_size=64, precision="32", batch_size=4, lr=0.03, epochs=3).updated(
            split_sizes=[8, 2, 2], accelerator="cpu", devices=1
        ),
        data,
        single,
    )
    assert json.loads((single / "splits.json").read_text()) == json.loads((run / "splits.json").read_text())
    single_rows = read_rows(single / "metrics.csv")
    for ddp_row, single_row in zip(ddp_rows, single_rows, strict=True):
        for key in ("train_loss", "val_loss", "val_dice"):
            assert abs(float(ddp_row[key]) - float(single_row[key])) < 0.1, (key, ddp_row, single_row)

    best = json.loads((run / "best" / "config.json").read_text())["training"]
    report = run_evaluation(str(run), data, None, EvaluationOptions(split="val"))
    assert report.result.metrics["mean_dice"] == pytest.approx(best["val_metrics"]["val_dice"], abs=1e-5)


def test_init_weights_starts_from_given_weights(synthetic_dataset, tmp_path):
    from polypseg.training.train import _init_from_weights

    data = synthetic_dataset(sizes=[(64, 64)] * 12)
    first = tmp_path / "first"
    train(tiny_config(epochs=1), data, first)
    module = SegmentationModule(tiny_config().to_dict())
    _init_from_weights(module, str(first))
    expected = load_pretrained(first).state_dict()
    for name, tensor in module.model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    # End to end: the fine-tuning run records where it started.
    second = tmp_path / "second"
    train(tiny_config(epochs=1, init_weights=str(first)), data, second)
    assert load_config(second / "config.yaml").init_weights == str(first)


def test_init_weights_of_another_width_is_refused(synthetic_dataset, tmp_path):
    from polypseg.training.train import _init_from_weights
    from polypseg.weights import WeightsError

    module = SegmentationModule(tiny_config(base_channels=8).to_dict())
    with pytest.raises(WeightsError, match="base_channels=16"):
        _init_from_weights(module, "bundled")  # the bundled model is width 16
    _init_from_weights(SegmentationModule(tiny_config(base_channels=16).to_dict()), "bundled")


def test_init_weights_for_other_input_channels_is_refused(tmp_path):
    from polypseg.model import UNet
    from polypseg.training.train import _init_from_weights
    from polypseg.weights import WeightsError, save_pretrained

    gray = save_pretrained(UNet(in_channels=1, base_channels=8), tmp_path / "gray")  # loading it raised RuntimeError
    with pytest.raises(WeightsError, match="in_channels=1"):
        _init_from_weights(SegmentationModule(tiny_config(base_channels=8).to_dict()), str(gray))


@pytest.mark.slow
def test_compiled_training_keeps_plain_checkpoints(synthetic_dataset, tmp_path):
    data = synthetic_dataset(sizes=[(64, 64)] * 12)
    run = tmp_path / "run"
    train(tiny_config(epochs=1, compile=True), data, run)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert all(not key.startswith("_compiled") and "_orig_mod" not in key for key in checkpoint["state_dict"])
    assert load_pretrained(run).base_channels == 4
    # A compiled run resumes (and continues) like any other.
    train(tiny_config(epochs=2, compile=True), None, run, resume=True)
    assert [int(r["epoch"]) for r in read_rows(run / "metrics.csv")] == [0, 1]


PRE_LAYOUT_RUN = Path(__file__).parent / "fixtures" / "pre-layout-run"


def test_resume_of_a_run_made_before_the_layout(synthetic_dataset, tmp_path):
    """``last.ckpt``, ``config.yaml`` and ``best/`` written by the flat-module code resume with this layout."""
    import shutil

    data = synthetic_dataset(sizes=[(32, 32)] * 8)
    run = tmp_path / "run"
    shutil.copytree(PRE_LAYOUT_RUN, run)
    before = load_pretrained(run)
    result = train(load_config(run / "config.yaml").updated(epochs=2), data, run, resume=True)
    assert result.epochs_run == 2
    assert [int(row["epoch"]) for row in read_rows(run / "metrics.csv")] == [0, 1]
    assert load_pretrained(run).base_channels == before.base_channels == 2
