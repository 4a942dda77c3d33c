"""``train()`` end to end: run folder contents, loss going down, resume, time budgets, DDP, initial weights,
and a run made before the package layout."""

from __future__ import annotations

import json
import time
import warnings

import pytest
import torch
from safetensors.torch import load_file

from helpers import FIXTURES_DIR, read_rows, tiny_config
from polypseg.config import TrainConfig, load_config
from polypseg.training import SegmentationModule, train
from polypseg.weights import load_pretrained


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


def test_time_budget_stops_on_time_writes_best_and_resume_counts_the_spent_time(synthetic_dataset, tmp_path):
    data = synthetic_dataset(sizes=[(64, 64)] * 12)
    run = tmp_path / "run"
    config = tiny_config(epochs=1000, time_budget="4s", scheduler="onecycle", ema_decay=0.9, train_sizes=[32, 64])
    start = time.monotonic()
    result = train(config, data, run)
    elapsed = time.monotonic() - start
    assert elapsed < 60  # stopped by the budget, not by 1000 epochs
    rows = read_rows(run / "metrics.csv")
    assert 1 <= len(rows) < 1000 and result.best_score is not None
    assert (run / "best" / "model.safetensors").exists()
    assert load_config(run / "config.yaml").time_budget == 4.0
    saved = json.loads((run / "best" / "config.json").read_text())["training"]["config"]
    assert saved["time_budget"] == 4.0 and saved["ema_decay"] == 0.9
    # The schedule ran over the budget: the learning rate came down from its peak by the end.
    assert float(rows[-1]["lr"]) < 3e-3
    # Resuming a run whose budget is spent trains no further epoch ...
    train(tiny_config(), None, run, resume=True)
    assert len(read_rows(run / "metrics.csv")) == len(rows)
    # ... and a larger budget on resume continues it, counting the time already spent.
    before = load_file(run / "best" / "model.safetensors")
    train(tiny_config(time_budget="8s"), None, run, resume=True)
    assert len(read_rows(run / "metrics.csv")) > len(rows)
    assert load_config(run / "config.yaml").time_budget == 8.0
    assert before.keys() == load_file(run / "best" / "model.safetensors").keys()


PRE_LAYOUT_RUN = FIXTURES_DIR / "pre-layout-run"


def test_resume_of_a_run_made_before_the_layout(synthetic_dataset, tmp_path):
    """``last.ckpt``, ``config.yaml`` and ``best/`` written by the flat-module code resume with this layout."""
    import shutil

    data = synthetic_dataset(sizes=[(32, 32)] * 8)
    run = tmp_path / "run"
    shutil.copytree(PRE_LAYOUT_RUN, run)
    assert (run / "checkpoints" / "last.ckpt").is_file()  # the fixture holds the old code's checkpoint
    first_epoch = read_rows(run / "metrics.csv")[0]
    before = load_pretrained(run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(load_config(run / "config.yaml").updated(epochs=2), data, run, resume=True)
    assert not [w for w in caught if "no checkpoint" in str(w.message)], "the run started again instead of resuming"
    assert result.epochs_run == 2
    rows = read_rows(run / "metrics.csv")
    assert [int(row["epoch"]) for row in rows] == [0, 1]
    assert rows[0] == first_epoch  # epoch 0 is the old run's, not trained again
    assert load_pretrained(run).base_channels == before.base_channels == 2
