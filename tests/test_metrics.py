import numpy as np
import pytest
import torch
import torch.nn.functional as F

from polypseg.metrics import SegmentationMetrics, binary_image_scores, class_counts, find_polyps, ratio

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
    detection = {"detection_recall", "detection_precision", "polyps_true", "polyps_detected", "polyps_missed"}
    assert set(scores) == set(EXPECTED) | detection | {"false_detections"}
    assert all(value.dtype == torch.float32 and value.dim() == 0 for value in scores.values())


def test_logits_are_accepted():
    logits = F.one_hot(PRED, 3).permute(0, 3, 1, 2).float() * 5.0 + 0.1 * torch.rand(1, 3, 2, 4)
    from_logits, from_classes = _compute(logits, TARGET), _compute(PRED, TARGET)
    assert {k: v for k, v in from_logits.items() if "pranet" not in k} == pytest.approx(from_classes)
    assert {"polyp_mean_dice_pranet", "polyp_max_dice_pranet"} <= set(from_logits)


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


# --- literature protocol and polyp-level detection ---------------------------------------------------


def test_threshold_dice_curve_by_hand():
    from polypseg.metrics import threshold_dice_curves

    probability = torch.tensor([[[0.0, 0.5], [1.0, 1.0]]])  # min-max normalised: levels 0, 128, 255, 255
    truth = torch.tensor([[[False, True], [True, False]]])
    curve = threshold_dice_curves(probability, truth)[0]
    assert curve.shape == (256,)
    # k = 0: everything predicted: tp 2, fp 2, fn 0 -> 4/6
    assert float(curve[0]) == pytest.approx(4 / 6)
    # 1 <= k <= 128: levels 128, 255, 255 predicted: tp 2, fp 1 -> 4/5
    assert float(curve[1]) == pytest.approx(4 / 5) and float(curve[128]) == pytest.approx(4 / 5)
    # 129 <= k <= 255: levels 255 predicted: tp 1, fp 1, fn 1 -> 2/4
    assert float(curve[129]) == pytest.approx(0.5) and float(curve[255]) == pytest.approx(0.5)


def test_pranet_scores_from_logits():
    metric = SegmentationMetrics()
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = 1
    logits = torch.zeros(1, 3, 8, 8)
    logits[0, 0] = 5.0
    logits[0, 1, 2:6, 2:6] = 10.0  # confident and right: every threshold above 0 gives Dice 1
    metric.update(logits, target)
    scores = metric.compute()
    assert float(scores["polyp_max_dice_pranet"]) == pytest.approx(1.0)
    assert 0.99 < float(scores["polyp_mean_dice_pranet"]) <= 1.0
    assert float(scores["polyp_dice"]) == pytest.approx(1.0)
    assert metric.last_image_scores["mean_dice_pranet"].shape == (1,)


def test_box_iou_and_greedy_matching():
    from polypseg.metrics import box_iou, match_boxes

    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(1.0)
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    truth = [(0, 0, 10, 10), (20, 20, 30, 30)]
    assert match_boxes([(0, 0, 10, 9), (1, 1, 10, 10)], truth) == 1  # one truth box, matched once
    assert match_boxes([(0, 0, 10, 10), (20, 20, 30, 31)], truth) == 2
    assert match_boxes([(5, 0, 15, 10)], truth) == 0  # IoU 1/3 < 0.5
    assert match_boxes([], truth) == 0


def test_detection_counts_from_masks_and_from_boxes():
    target = torch.zeros(1, 32, 32, dtype=torch.long)
    target[0, 2:10, 2:10] = 1
    target[0, 20:30, 20:30] = 1
    pred = torch.zeros_like(target)
    pred[0, 2:10, 2:10] = 1  # finds the first polyp
    pred[0, 15:17, 0:2] = 1  # a 4-pixel speck: counted (min region 0.1% of 1024 px = 2 px)
    metric = SegmentationMetrics()
    metric.update(pred, target)
    scores = metric.compute()
    assert int(scores["polyps_true"]) == 2 and int(scores["polyps_detected"]) == 1
    assert int(scores["polyps_missed"]) == 1 and int(scores["false_detections"]) == 1
    assert float(scores["detection_recall"]) == pytest.approx(0.5)
    assert float(scores["detection_precision"]) == pytest.approx(0.5)
    boxed = SegmentationMetrics()
    boxed.update(pred, target, truth_boxes=[[(2, 2, 10, 10)]])
    assert float(boxed.compute()["detection_recall"]) == pytest.approx(1.0)


# --- literature measures (pysodmetrics) --------------------------------------------------------------

# A 4x4 mask with a 2x2 polyp in the middle (4 of 16 pixels).
MASK_4X4 = np.zeros((4, 4), dtype=bool)
MASK_4X4[1:3, 1:3] = True


def _literature(probability: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from polypseg.metrics import literature_image_scores

    scores = literature_image_scores(probability, truth)
    return {
        "mean_dice": float(scores["dice"].mean()),
        "mean_iou": float(scores["iou"].mean()),
        "mean_em": float(scores["em"].mean()),
        "max_em": float(scores["em"].max()),
        "wfm": scores["wfm"],
        "sm": scores["sm"],
        "mae": scores["mae"],
    }


def test_literature_perfect_prediction_by_hand():
    scores = _literature(MASK_4X4.astype(float), MASK_4X4)
    assert scores["mae"] == 0.0
    assert scores["sm"] == pytest.approx(1.0)
    assert scores["wfm"] == pytest.approx(1.0)
    # 255 of the 256 thresholds (p >= 1/255 ... p >= 1) give the mask exactly; p >= 0 takes all 16 pixels:
    # Dice 2*4/(4+16) = 0.4, IoU 4/16.
    assert scores["mean_dice"] == pytest.approx((255 + 0.4) / 256)
    assert scores["mean_iou"] == pytest.approx((255 + 0.25) / 256)
    # E-measure divides by (pixels - 1), as the MATLAB original: a perfect 4x4 map scores 16/15 (1 on large maps).
    assert scores["max_em"] == pytest.approx(16 / 15)


def test_literature_perfect_prediction_on_a_large_map():
    truth = np.zeros((64, 64), dtype=bool)
    truth[20:40, 10:30] = True
    scores = _literature(truth.astype(float), truth)
    assert scores["sm"] == pytest.approx(1.0)
    assert scores["wfm"] == pytest.approx(1.0)
    assert scores["max_em"] == pytest.approx(1.0, abs=1e-3)
    assert scores["mae"] == 0.0


def test_literature_over_segmentation_by_hand():
    # Predicted: the top two rows (8 pixels), truth: the 2x2 block (rows 1-2, columns 1-2).
    prediction = np.zeros((4, 4))
    prediction[:2] = 1.0
    scores = _literature(prediction, MASK_4X4)
    # Wrong pixels: 6 predicted outside the mask (row 0 and row 1's ends), 2 mask pixels missed (row 2).
    assert scores["mae"] == pytest.approx(8 / 16)
    # p >= k/255, k >= 1: tp 2, fp 6, fn 2 -> Dice 4/12, IoU 2/10; p >= 0: Dice 0.4, IoU 0.25.
    assert scores["mean_dice"] == pytest.approx((255 * 4 / 12 + 0.4) / 256)
    assert scores["mean_iou"] == pytest.approx((255 * 2 / 10 + 0.25) / 256)


def test_literature_all_zero_prediction_by_hand():
    scores = _literature(np.zeros((4, 4)), MASK_4X4)
    assert scores["mae"] == pytest.approx(4 / 16)
    # Only p >= 0 predicts anything (everything): Dice 0.4; the other 255 thresholds predict nothing: 0.
    assert scores["mean_dice"] == pytest.approx(0.4 / 256)
    assert scores["mean_iou"] == pytest.approx(0.25 / 256)
    # E-measure: a constant binary map has zero deviation from its mean, so every pixel's alignment is 0,
    # enhanced (0 + 1)^2 / 4 = 1/4: 16 * 1/4 / (16 - 1) at every threshold.
    assert scores["mean_em"] == pytest.approx(4 / 15)
    assert scores["max_em"] == pytest.approx(4 / 15)
    # S-measure = 0.5 * object + 0.5 * region. Object: polyp part 0, background part 1 weighted by its share
    # 12/16. Region: split at the truth's centroid (row 3, column 3 after rounding, 1-based); the quadrant
    # holding the polyp (9 pixels) scores 0, the three without polyp (3 + 3 + 1 pixels) score 1.
    assert scores["sm"] == pytest.approx(0.5 * 12 / 16 + 0.5 * 7 / 16)


def test_literature_all_zero_prediction_weighted_f_measure_is_zero():
    # Away from the border (the 7x7 Gaussian pads with zeros), missing the whole polyp gives wFm 0.
    truth = np.zeros((32, 32), dtype=bool)
    truth[12:20, 12:20] = True
    assert _literature(np.zeros((32, 32)), truth)["wfm"] == pytest.approx(0.0, abs=1e-9)
    assert _literature(truth.astype(float), truth)["wfm"] == pytest.approx(1.0)


def _confident_logits(polyp: torch.Tensor) -> torch.Tensor:
    """Logits (B, 3, H, W) that call ``polyp`` pixels polyp and the others background, saturating softmax."""
    logits = torch.full((polyp.shape[0], 3, *polyp.shape[1:]), -40.0)
    logits[:, 0] = torch.where(polyp, -40.0, 40.0)
    logits[:, 1] = torch.where(polyp, 40.0, -40.0)
    return logits


def test_segmentation_metrics_literature_keys_by_hand():
    truth = torch.from_numpy(MASK_4X4)[None]
    over = torch.zeros(1, 4, 4, dtype=torch.bool)
    over[0, :2] = True
    metric = SegmentationMetrics(literature=True)
    metric.update(_confident_logits(truth), truth.long())  # perfect
    metric.update(_confident_logits(over), truth.long())  # the over-segmentation above
    scores = {key: float(value) for key, value in metric.compute().items()}
    assert scores["lit_mae"] == pytest.approx((0 + 8 / 16) / 2, abs=1e-6)
    perfect_dice, over_dice = (255 + 0.4) / 256, (255 * 4 / 12 + 0.4) / 256
    assert scores["lit_mean_dice"] == pytest.approx((perfect_dice + over_dice) / 2, abs=1e-6)
    assert scores["lit_mean_iou"] == pytest.approx(((255 + 0.25) / 256 + (255 * 0.2 + 0.25) / 256) / 2, abs=1e-6)
    assert scores["lit_max_em"] <= 16 / 15 + 1e-6 and scores["lit_mean_em"] <= scores["lit_max_em"]
    assert {"lit_wfm", "lit_sm"} <= set(scores)
    assert metric.last_image_scores["lit_mae"].tolist() == pytest.approx([0.5])
    # The PraNet-protocol mean Dice of polypseg and pysodmetrics' agree on the same maps.
    assert scores["lit_mean_dice"] == pytest.approx(scores["polyp_mean_dice_pranet"], abs=1e-6)
    metric.reset()
    metric.update(_confident_logits(truth), truth.long())
    assert float(metric.compute()["lit_mae"]) == 0.0


def test_literature_mean_dice_matches_the_pranet_curve_on_soft_maps():
    torch.manual_seed(0)
    target = torch.zeros(3, 32, 32, dtype=torch.long)
    target[:, 8:24, 6:20] = 1
    logits = torch.randn(3, 3, 32, 32)
    logits[:, 1, 8:24, 6:20] += 1.5
    metric = SegmentationMetrics(literature=True)
    metric.update(logits, target)
    scores = metric.compute()
    # Same 8-bit maps, same thresholds (pysodmetrics truncates k/255*255 where polypseg rounds: tiny gap).
    assert float(scores["lit_mean_dice"]) == pytest.approx(float(scores["polyp_mean_dice_pranet"]), abs=2e-3)
    for key in ("lit_wfm", "lit_sm", "lit_mean_em", "lit_max_em", "lit_mae"):
        assert 0.0 < float(scores[key]) < 1.0, key


def test_literature_measures_are_off_by_default_and_need_logits():
    truth = torch.from_numpy(MASK_4X4)[None].long()
    assert not any(key.startswith("lit_") for key in _compute(_confident_logits(truth.bool()), truth))
    metric = SegmentationMetrics(literature=True)
    metric.update(truth, truth)  # class maps carry no probability: no literature measures
    assert not any(key.startswith("lit_") for key in metric.compute())


@pytest.mark.precision
def test_find_polyps_counts_regions_and_boxes():
    mask = np.zeros((20, 30), bool)
    mask[2:6, 3:9] = True  # 24 px
    mask[10:19, 20:29] = True  # 81 px
    mask[0, 29] = True  # 1 px speck
    regions = find_polyps(mask)
    assert [r.pixels for r in regions] == [81, 24, 1]
    assert regions[0].box == (20, 10, 29, 19)
    assert regions[1].box == (3, 2, 9, 6)
    assert [r.pixels for r in find_polyps(mask, min_pixels=2)] == [81, 24]
    assert find_polyps(np.zeros((5, 5), bool)) == []
