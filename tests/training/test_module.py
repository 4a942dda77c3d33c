"""The LightningModule (``polypseg.training.module``): one-cycle schedule, EMA, random crops, progressive
resizing and progress."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from helpers import tiny_config
from polypseg.training import SegmentationModule, one_cycle_factor
from polypseg.training.module import _ema_average


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


def test_progress_counts_steps_without_a_budget():
    module = SegmentationModule(tiny_config().to_dict())
    module._trainer = SimpleNamespace(global_step=5, estimated_stepping_batches=20, callbacks=[], world_size=1)  # type: ignore[assignment]
    assert module.progress() == 0.25
