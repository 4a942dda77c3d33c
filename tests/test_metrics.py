import pytest
import torch
import torch.nn.functional as F

from polypseg.metrics import SegmentationMetrics, binary_image_scores, class_counts, ratio

# Hand-made 2x4 class maps (0 background, 1 polyp, 2 boundary).
TARGET = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, 1]]])
PRED = torch.tensor([[[0, 1, 1, 1], [2, 2, 0, 1]]])
# By hand, per class (tp, fp, fn):
#   background (1, 1, 2): dice 2/5, iou 1/4
#   polyp      (3, 1, 0): dice 6/7, iou 3/4
#   boundary   (1, 1, 1): dice 1/2, iou 1/3
# Binary polyp (classes 1 and 2 together): tp 4, fp 2, fn 1: dice 8/11, iou 4/7, precision 4/6, recall 4/5.
EXPECTED = {
    "dice_background": 2 / 5,
    "dice_polyp": 6 / 7,
    "dice_boundary": 1 / 2,
    "iou_background": 1 / 4,
    "iou_polyp": 3 / 4,
    "iou_boundary": 1 / 3,
    "mean_dice": (2 / 5 + 6 / 7 + 1 / 2) / 3,
    "mean_iou": (1 / 4 + 3 / 4 + 1 / 3) / 3,
    "polyp_dice": 8 / 11,
    "polyp_iou": 4 / 7,
    "polyp_precision": 4 / 6,
    "polyp_recall": 4 / 5,
    "polyp_dice_dataset": 8 / 11,
    "polyp_iou_dataset": 4 / 7,
    "polyp_precision_dataset": 4 / 6,
    "polyp_recall_dataset": 4 / 5,
    "images": 1,
}


def _compute(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    metric = SegmentationMetrics()
    metric.update(pred, target)
    return {key: float(value) for key, value in metric.compute().items()}


def test_class_counts_by_hand():
    counts = class_counts(PRED, TARGET, 3)
    assert counts.tolist() == [[1, 1, 2], [3, 1, 0], [1, 1, 1]]


@pytest.mark.parametrize("key", list(EXPECTED))
def test_scores_by_hand(key):
    assert _compute(PRED, TARGET)[key] == pytest.approx(EXPECTED[key], abs=1e-6)


def test_compute_returns_every_key_as_float32():
    result = SegmentationMetrics()
    result.update(PRED, TARGET)
    scores = result.compute()
    assert set(scores) == set(EXPECTED)
    assert all(value.dtype == torch.float32 and value.dim() == 0 for value in scores.values())


def test_logits_are_accepted():
    logits = F.one_hot(PRED, 3).permute(0, 3, 1, 2).float() * 5.0 + 0.1 * torch.rand(1, 3, 2, 4)
    assert _compute(logits, TARGET) == pytest.approx(_compute(PRED, TARGET))


def test_per_image_mean_differs_from_dataset_level():
    # Image A: an 8-pixel polyp found exactly (dice 1). Image B: a 1-pixel polyp missed, one false pixel (dice 0).
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, :2, :] = 1
    pred[0, :2, :] = 1
    target[1, 3, 3] = 1
    pred[1, 0, 0] = 1
    scores = _compute(pred, target)
    assert scores["polyp_dice"] == pytest.approx((1.0 + 0.0) / 2)
    # Pooled: tp 8, fp 1, fn 1 -> 16 / 18.
    assert scores["polyp_dice_dataset"] == pytest.approx(16 / 18)
    assert scores["polyp_iou"] == pytest.approx(0.5)
    assert scores["polyp_iou_dataset"] == pytest.approx(8 / 10)
    assert scores["images"] == 2


def test_updates_accumulate_like_one_batch():
    torch.manual_seed(0)
    pred = torch.randint(0, 3, (4, 8, 8))
    target = torch.randint(0, 3, (4, 8, 8))
    split = SegmentationMetrics()
    split.update(pred[:1], target[:1])
    split.update(pred[1:], target[1:])
    assert {k: float(v) for k, v in split.compute().items()} == pytest.approx(_compute(pred, target))
    split.reset()
    split.update(PRED, TARGET)
    assert float(split.compute()["images"]) == 1


def test_empty_truth_and_empty_prediction_counts_one():
    empty = torch.zeros(1, 4, 4, dtype=torch.long)
    scores = _compute(empty, empty)
    for key in ("polyp_dice", "polyp_iou", "polyp_precision", "polyp_recall", "polyp_dice_dataset"):
        assert scores[key] == 1.0, key
    # Polyp and boundary are absent from truth and prediction: their dataset-level Dice is 1 too.
    assert scores["dice_polyp"] == 1.0
    assert scores["dice_boundary"] == 1.0
    assert scores["mean_dice"] == 1.0


def test_empty_truth_but_predicted_polyp_counts_zero():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    pred = target.clone()
    pred[0, 1, 1] = 1
    scores = _compute(pred, target)
    for key in ("polyp_dice", "polyp_iou", "polyp_precision", "polyp_recall"):
        assert scores[key] == 0.0, key


def test_missed_polyp_counts_zero():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 1:3, 1:3] = 1
    pred = torch.zeros_like(target)
    scores = _compute(pred, target)
    for key in ("polyp_dice", "polyp_iou", "polyp_precision", "polyp_recall"):
        assert scores[key] == 0.0, key


def test_empty_image_pulls_per_image_mean_but_barely_the_dataset_level():
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    pred = target.clone()
    pred[1, 0, 0] = 1  # one false pixel on an image without polyp
    scores = _compute(pred, target)
    assert scores["polyp_dice"] == pytest.approx(0.5)
    assert scores["polyp_dice_dataset"] == pytest.approx(16 / 17)


def test_boundary_counts_as_polyp_in_binary_scores():
    target = torch.tensor([[[0, 1, 2, 0]]])
    pred = torch.tensor([[[0, 2, 1, 0]]])
    scores = _compute(pred, target)
    assert scores["polyp_dice"] == 1.0
    assert scores["dice_polyp"] == 0.0
    assert scores["dice_boundary"] == 0.0


def test_no_update_gives_nan_per_image_scores():
    metric = SegmentationMetrics()
    with pytest.warns(UserWarning):
        scores = metric.compute()
    assert torch.isnan(scores["polyp_dice"])
    assert float(scores["images"]) == 0


def test_ratio_and_binary_image_scores():
    assert ratio(torch.tensor([1, 0, 0]), torch.tensor([2, 0, 0]), torch.tensor([False, True, False])).tolist() == [
        0.5,
        1.0,
        0.0,
    ]
    pred = torch.tensor([[[True, True], [False, False]]])
    true = torch.tensor([[[True, False], [True, False]]])
    scores = binary_image_scores(pred, true)
    assert scores["dice"].tolist() == pytest.approx([0.5])
    assert scores["iou"].tolist() == pytest.approx([1 / 3])
    assert scores["tp"].tolist() == [1]
