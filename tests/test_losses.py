import math

import pytest
import torch
import torch.nn.functional as F

from polypseg import CombinedLoss as TopLevelCombinedLoss
from polypseg.losses import CombinedLoss, combined_loss, soft_dice_loss, soft_dice_per_class

TARGETS = {
    "mixed": [[[0, 0], [0, 1]]],
    "all_classes": [[[0, 1, 2], [2, 2, 0]]],
    "one_class": [[[1, 1], [1, 1]]],
    "batch_of_two": [[[0, 2], [1, 1]], [[2, 2], [0, 0]]],
}


def _one_hot_logits(target: torch.Tensor, num_classes: int = 3, scale: float = 100.0) -> torch.Tensor:
    return F.one_hot(target, num_classes).permute(0, 3, 1, 2).float() * scale


def _uniform_dice_by_hand(target: torch.Tensor, num_classes: int = 3, smooth: float = 1.0) -> list[float]:
    """Dice per class of p = 1/C everywhere: (2 * n_c / C + smooth) / (N / C + n_c + smooth)."""
    total = target.numel()
    dice = []
    for c in range(num_classes):
        count = int((target == c).sum())
        dice.append((2 * count / num_classes + smooth) / (total / num_classes + count + smooth))
    return dice


@pytest.mark.parametrize("name", list(TARGETS))
def test_perfect_prediction_gives_zero_loss(name):
    target = torch.tensor(TARGETS[name])
    logits = _one_hot_logits(target)
    assert float(combined_loss(logits, target)) == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(soft_dice_per_class(logits, target), torch.ones(3))


@pytest.mark.parametrize("name", list(TARGETS))
def test_uniform_logits_by_hand(name):
    target = torch.tensor(TARGETS[name])
    logits = torch.zeros(target.shape[0], 3, *target.shape[1:])
    assert float(F.cross_entropy(logits, target)) == pytest.approx(math.log(3), abs=1e-6)
    dice = _uniform_dice_by_hand(target)
    torch.testing.assert_close(soft_dice_per_class(logits, target), torch.tensor(dice))
    expected = 0.5 * math.log(3) + 0.5 * (1 - sum(dice) / 3)
    assert float(combined_loss(logits, target)) == pytest.approx(expected, abs=1e-6)


def test_uniform_logits_literal_values():
    # target [[0, 0], [0, 1]], p = 1/3: class 0 (2+1)/(4/3+3+1) = 9/16, class 1 (2/3+1)/(4/3+1+1) = 1/2,
    # class 2 (0+1)/(4/3+0+1) = 3/7.
    target = torch.tensor([[[0, 0], [0, 1]]])
    logits = torch.zeros(1, 3, 2, 2)
    torch.testing.assert_close(soft_dice_per_class(logits, target), torch.tensor([9 / 16, 1 / 2, 3 / 7]))
    mean_dice = (9 / 16 + 1 / 2 + 3 / 7) / 3
    assert float(soft_dice_loss(logits, target)) == pytest.approx(1 - mean_dice, abs=1e-6)
    assert float(combined_loss(logits, target)) == pytest.approx(0.5 * math.log(3) + 0.5 * (1 - mean_dice), abs=1e-6)


def test_class_absent_from_target_and_prediction_scores_one():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    logits = torch.full((1, 3, 4, 4), -50.0)
    logits[:, 0] = 50.0
    dice = soft_dice_per_class(logits, target)
    torch.testing.assert_close(dice, torch.ones(3))


def test_class_absent_from_target_but_predicted_scores_near_zero():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    logits = torch.full((1, 3, 4, 4), -50.0)
    logits[:, 2] = 50.0
    dice = soft_dice_per_class(logits, target)
    # class 2: (0 + 1) / (16 + 0 + 1); class 0: (0 + 1) / (0 + 16 + 1); class 1: absent everywhere -> 1.
    torch.testing.assert_close(dice, torch.tensor([1 / 17, 1.0, 1 / 17]))


@pytest.mark.parametrize("smooth", [0.5, 1.0, 2.0])
def test_smooth_enters_numerator_and_denominator(smooth):
    target = torch.tensor(TARGETS["all_classes"])
    logits = torch.zeros(1, 3, 2, 3)
    expected = torch.tensor(_uniform_dice_by_hand(target, smooth=smooth))
    torch.testing.assert_close(soft_dice_per_class(logits, target, smooth=smooth), expected)


@pytest.mark.parametrize("ce_weight, dice_weight", [(1.0, 0.0), (0.0, 1.0), (0.3, 0.7)])
def test_weights_combine_linearly(ce_weight, dice_weight):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    expected = ce_weight * F.cross_entropy(logits, target) + dice_weight * soft_dice_loss(logits, target)
    torch.testing.assert_close(combined_loss(logits, target, ce_weight, dice_weight), expected)


def test_module_equals_function():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    assert TopLevelCombinedLoss is CombinedLoss
    torch.testing.assert_close(CombinedLoss()(logits, target), combined_loss(logits, target))
    torch.testing.assert_close(
        CombinedLoss(ce_weight=0.2, dice_weight=0.8, smooth=2.0)(logits, target),
        combined_loss(logits, target, 0.2, 0.8, 2.0),
    )


def test_gradient_flows_to_logits():
    torch.manual_seed(2)
    logits = torch.randn(1, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (1, 8, 8))
    loss = CombinedLoss()(logits, target)
    assert loss.dim() == 0
    loss.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_half_precision_logits_give_float32_loss():
    target = torch.tensor(TARGETS["mixed"])
    logits = torch.zeros(1, 3, 2, 2, dtype=torch.float16)
    loss = combined_loss(logits, target)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(combined_loss(logits.float(), target)), abs=1e-6)
