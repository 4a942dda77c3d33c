"""Time-budgeted training, one-cycle schedule, EMA, random crops and progressive resizing."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from polypseg.config import TrainConfig, load_config, parse_duration
from polypseg.training import SegmentationModule, one_cycle_factor, train
from polypseg.training.module import _ema_average
from test_training import read_rows, tiny_config  # the tiny run settings shared by the training tests


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90.0), ("60m", 3600.0), ("1.5h", 5400.0), ("1h30m", 5400.0), (45, 45.0)]
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-5m", "0", "5 parsecs", "m"])
def test_parse_duration_refuses_nonsense(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_config_takes_budget_strings_and_old_boolean_augment():
    config = TrainConfig.from_dict({"time_budget": "15m", "augment": True})
    assert config.time_budget == 900.0 and config.augment == "strong"
    assert TrainConfig.from_dict({"augment": False}).augment == "none"
    for bad in ({"augment": "wild"}, {"scheduler": "step"}, {"optimizer": "sgd"}, {"ema_decay": 1.5}):
        with pytest.raises(ValueError):
            TrainConfig.from_dict(bad)
    with pytest.raises(ValueError, match="train_sizes"):
        TrainConfig.from_dict({"train_sizes": [100]})
    with pytest.raises(ValueError, match="crop_size"):
        TrainConfig.from_dict({"crop_size": 512})


def test_one_cycle_warms_up_then_anneals_to_the_floor():
    values = [one_cycle_factor(p / 100, 0.1, 0.01) for p in range(101)]
    peak = values.index(max(values))
    assert peak == 10 and values[peak] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(values[:peak], values[1 : peak + 1], strict=True))
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1 :], strict=False))
    assert values[-1] == pytest.approx(0.01)


def test_ema_average_follows_the_formula_with_warm_up():
    averaged, current = torch.zeros(3), torch.ones(3)
    # n = 0: effective decay min(0.99, 1/10) = 0.1 -> 0.9 of the current value.
    assert torch.allclose(_ema_average(averaged, current, torch.tensor(0), 0.99), torch.full((3,), 0.9))
    # Late in training the configured decay rules.
    assert torch.allclose(_ema_average(averaged, current, torch.tensor(10_000), 0.99), torch.full((3,), 0.01))
    counter = torch.tensor(5)
    assert _ema_average(counter, torch.tensor(9), torch.tensor(3), 0.99) == 9  # integer buffers: current value


def test_validation_and_best_use_the_ema_weights():
    module = SegmentationModule(tiny_config(ema_decay=0.9, scheduler="onecycle").to_dict())
    assert module.eval_model is module.ema.module
    assert all(
        not p.requires_grad or p is not q
        for p, q in zip(module.model.parameters(), module.eval_model.parameters(), strict=True)
    )
    optimizer_params = {id(p) for p in module.configure_optimizers().param_groups[0]["params"]}
    assert optimizer_params == {id(p) for p in module.model.parameters()}  # the EMA copy is never optimised
    plain = SegmentationModule(tiny_config().to_dict())
    assert plain.eval_model is plain.model and plain.ema is None


def _module_at(progress: float, **overrides: object) -> SegmentationModule:
    module = SegmentationModule(tiny_config(**overrides).to_dict())
    module.progress = lambda: progress  # type: ignore[method-assign]
    return module


def test_crops_and_progressive_sizes_keep_images_and_classes_aligned():
    images = torch.zeros(2, 3, 64, 64)
    targets = torch.zeros(2, 64, 64, dtype=torch.uint8)
    images[:, :, 16:48, 16:48] = 1.0
    targets[:, 16:48, 16:48] = 1
    module = _module_at(0.1, train_sizes=[32, 48, 64])
    assert module.train_size() == 32 and _module_at(0.5, train_sizes=[32, 48, 64]).train_size() == 48
    assert _module_at(1.0, train_sizes=[32, 48, 64]).train_size() == 64
    small_images, small_targets = module._crop_and_resize(images, targets)
    assert small_images.shape == (2, 3, 32, 32) and small_targets.shape == (2, 32, 32)
    assert small_targets.dtype == torch.uint8 and set(small_targets.unique().tolist()) <= {0, 1}
    # Where the resized image is clearly inside or outside the square, the class agrees with it.
    inside, outside = small_images[:, 0] > 0.99, small_images[:, 0] < 0.01
    assert (small_targets[inside] == 1).all() and (small_targets[outside] == 0).all()

    torch.manual_seed(0)
    crop_images, crop_targets = _module_at(0.0, crop_size=32)._crop_and_resize(images, targets)
    assert crop_images.shape == (2, 3, 32, 32) and crop_targets.shape == (2, 32, 32)
    assert torch.equal(crop_images[:, 0] > 0.5, crop_targets == 1)


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


def test_cli_time_budget_and_presets(synthetic_dataset, tmp_path, capsys):
    from polypseg.apps.cli import main

    data = synthetic_dataset(sizes=[(64, 64)] * 12)
    config = tmp_path / "c.yaml"
    config.write_text("base_channels: 4\nimage_size: 64\nprecision: '32'\nsplit_sizes: [8, 2, 2]\nbatch_size: 4\n")
    args = ["train", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "run")]
    assert main([*args, "--time-budget", "3s", "--augment", "light", "--ema-decay", "0.9"]) == 0
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert (saved.time_budget, saved.augment, saved.ema_decay) == (3.0, "light", 0.9)
    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path / "run2"), "--time-budget", "soon"]) == 2
    assert "not a duration" in capsys.readouterr().err


def test_progress_counts_steps_without_a_budget():
    module = SegmentationModule(tiny_config().to_dict())
    module._trainer = SimpleNamespace(global_step=5, estimated_stepping_batches=20, callbacks=[], world_size=1)  # type: ignore[assignment]
    assert module.progress() == 0.25
