import numpy as np
import pytest
import torch

from polypseg.classes import (
    BACKGROUND,
    BOUNDARY,
    CLASS_NAMES,
    POLYP,
    binarize_mask,
    classes_to_mask,
    mask_to_classes,
)
from polypseg.images import read_mask, resize_mask


def _square_mask(size: int = 11, start: int = 2, stop: int = 9) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[start:stop, start:stop] = True
    return mask


def _random_masks(batch: int = 3, size: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masks = np.zeros((batch, size, size), dtype=bool)
    for b in range(batch):
        y, x = rng.integers(0, size // 2, size=2)
        h, w = rng.integers(3, size // 2, size=2)
        masks[b, y : y + h, x : x + w] = True
    masks[0, 0:4, 0:size] = True  # touches the image border
    return masks


def test_class_constants():
    assert CLASS_NAMES == ("background", "polyp", "boundary")
    assert (BACKGROUND, POLYP, BOUNDARY) == (0, 1, 2)


@pytest.mark.parametrize("boundary_width_px", [0, 1, 3])
@pytest.mark.parametrize("batched", [False, True])
def test_round_trip_numpy(boundary_width_px, batched):
    masks = _random_masks()
    mask = masks if batched else masks[1]
    classes = mask_to_classes(mask, boundary_width_px=boundary_width_px)
    assert isinstance(classes, np.ndarray)
    assert classes.dtype == np.uint8
    assert classes.shape == mask.shape
    np.testing.assert_array_equal(classes_to_mask(classes), mask)


@pytest.mark.parametrize("boundary_width_px", [0, 1, 3])
@pytest.mark.parametrize("batched", [False, True])
def test_round_trip_torch(boundary_width_px, batched):
    masks = torch.from_numpy(_random_masks())
    mask = masks if batched else masks[1]
    classes = mask_to_classes(mask, boundary_width_px=boundary_width_px)
    assert isinstance(classes, torch.Tensor)
    assert classes.dtype == torch.uint8
    assert classes.shape == mask.shape
    assert torch.equal(classes_to_mask(classes), mask)


def test_numpy_and_torch_agree():
    masks = _random_masks()
    np.testing.assert_array_equal(mask_to_classes(masks), mask_to_classes(torch.from_numpy(masks)).numpy())


def test_batched_equals_per_image():
    masks = _random_masks()
    batched = mask_to_classes(masks, boundary_width_px=2)
    for b in range(len(masks)):
        np.testing.assert_array_equal(batched[b], mask_to_classes(masks[b], boundary_width_px=2))


def test_boundary_width_one_by_hand():
    classes = mask_to_classes(_square_mask(), boundary_width_px=1)
    expected = np.zeros((11, 11), dtype=np.uint8)
    expected[2:9, 2:9] = BOUNDARY
    expected[3:8, 3:8] = POLYP
    np.testing.assert_array_equal(classes, expected)


def test_boundary_width_three_by_hand():
    classes = mask_to_classes(_square_mask(size=13, start=2, stop=11), boundary_width_px=3)
    expected = np.zeros((13, 13), dtype=np.uint8)
    expected[2:11, 2:11] = BOUNDARY
    expected[5:8, 5:8] = POLYP  # 3 px from every edge of the 9x9 square
    np.testing.assert_array_equal(classes, expected)


def test_boundary_uses_chessboard_distance():
    # A single background pixel inside a polyp: its 8 neighbours (diagonals included) become boundary.
    mask = np.ones((7, 7), dtype=bool)
    mask[3, 3] = False
    classes = mask_to_classes(mask, boundary_width_px=1)
    expected = np.full((7, 7), POLYP, dtype=np.uint8)
    expected[2:5, 2:5] = BOUNDARY
    expected[3, 3] = BACKGROUND
    np.testing.assert_array_equal(classes, expected)


def test_image_border_is_not_boundary():
    full = np.ones((8, 8), dtype=bool)
    assert (mask_to_classes(full, boundary_width_px=3) == POLYP).all()

    # A polyp cut off by the left frame: boundary only along its right (inner) edge.
    mask = np.zeros((6, 8), dtype=bool)
    mask[:, :4] = True
    classes = mask_to_classes(mask, boundary_width_px=1)
    np.testing.assert_array_equal(classes[0], [POLYP, POLYP, POLYP, BOUNDARY, 0, 0, 0, 0])
    assert (classes[:, 3] == BOUNDARY).all()
    assert (classes[:, :3] == POLYP).all()


def test_width_zero_gives_no_boundary():
    classes = mask_to_classes(_square_mask(), boundary_width_px=0)
    assert not (classes == BOUNDARY).any()
    np.testing.assert_array_equal(classes, _square_mask().astype(np.uint8))


def test_negative_width_raises():
    with pytest.raises(ValueError, match="boundary_width_px"):
        mask_to_classes(_square_mask(), boundary_width_px=-1)


def test_wrong_rank_raises():
    with pytest.raises(ValueError, match="shape"):
        mask_to_classes(np.zeros((1, 1, 4, 4), dtype=bool))


def test_all_background_mask():
    classes = mask_to_classes(np.zeros((5, 6), dtype=np.uint8))
    assert (classes == BACKGROUND).all()


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_0_255_masks_are_binarized_at_128(kind):
    values = np.array([[0, 8, 127, 128, 246, 255]], dtype=np.uint8)
    mask = values if kind == "numpy" else torch.from_numpy(values)
    expected = [[False, False, False, True, True, True]]
    np.testing.assert_array_equal(np.asarray(binarize_mask(mask)), expected)
    classes = mask_to_classes(mask, boundary_width_px=0)
    np.testing.assert_array_equal(np.asarray(classes), [[0, 0, 0, 1, 1, 1]])


def test_binarize_is_element_wise_and_keeps_booleans():
    mask = np.zeros((4, 5, 3), dtype=np.uint8)
    mask[1:3, 1:4, 0] = 255
    np.testing.assert_array_equal(binarize_mask(mask), mask >= 128)
    boolean = mask > 0
    assert binarize_mask(boolean) is boolean


def test_jpeg_like_noise_does_not_change_classes():
    clean = _square_mask()
    noisy = np.where(clean, 246, 8).astype(np.uint8)
    np.testing.assert_array_equal(mask_to_classes(noisy), mask_to_classes(clean))


def test_torch_keeps_device_and_input_unchanged():
    mask = torch.from_numpy(_square_mask())
    before = mask.clone()
    classes = mask_to_classes(mask)
    assert classes.device == mask.device
    assert torch.equal(mask, before)


def test_real_masks_round_trip(real_subset):
    mask_paths = sorted((real_subset / "masks").iterdir())[:4]
    assert mask_paths
    for path in mask_paths:
        raw = read_mask(path)
        binary = resize_mask(raw, (256, 256))
        np.testing.assert_array_equal(binary, resize_mask(binarize_mask(raw), (256, 256)))
        classes = mask_to_classes(binary)
        np.testing.assert_array_equal(classes_to_mask(classes), binary)
        boundary = (classes == BOUNDARY).sum()
        polyp = (classes == POLYP).sum()
        assert boundary > 0, path.name
        assert boundary < polyp, path.name
        assert boundary < 0.5 * binary.sum(), path.name


@pytest.mark.precision
def test_fast_class_argmax_equals_argmax_with_ties():
    from polypseg.classes import logits_to_classes

    logits = torch.randn(3, 97, 131)
    logits[:, :10] = torch.randint(0, 2, (3, 10, 131)).float()  # many exact ties
    assert torch.equal(logits_to_classes(logits), logits.argmax(0).to(torch.uint8))
    batched = torch.randn(2, 3, 17, 19)
    assert torch.equal(logits_to_classes(batched), batched.argmax(1).to(torch.uint8))
