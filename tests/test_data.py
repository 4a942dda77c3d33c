import json

import numpy as np
import pytest
import torch

from polypseg.data import (
    CachedPairs,
    DatasetError,
    Sample,
    TensorPairDataset,
    build_augmentation,
    find_pairs,
    load_pairs,
    load_splits,
    make_splits,
    parse_split_sizes,
    save_splits,
)

FAKE_NAMES = [f"img{i:04d}" for i in range(1000)]


# --- find_pairs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_suffix", [".jpg", ".png"])
def test_find_pairs_lists_sorted_pairs(synthetic_dataset, mask_suffix):
    root = synthetic_dataset(mask_suffix=mask_suffix)
    samples = find_pairs(root)
    assert [s.name for s in samples] == ["sample_000", "sample_001", "sample_002", "sample_003"]
    for sample in samples:
        assert isinstance(sample, Sample)
        assert sample.image_path == root / "images" / f"{sample.name}.jpg"
        assert sample.mask_path == root / "masks" / f"{sample.name}{mask_suffix}"


def test_find_pairs_ignores_hidden_and_non_image_files(synthetic_dataset):
    root = synthetic_dataset()
    (root / "images" / ".DS_Store").write_bytes(b"junk")
    (root / "images" / "._sample_000.jpg").write_bytes(b"junk")
    (root / "images" / "readme.txt").write_text("not an image")
    (root / "images" / "subfolder.jpg").mkdir()
    assert len(find_pairs(root)) == 4


def test_missing_mask_names_the_image(synthetic_dataset):
    root = synthetic_dataset()
    (root / "masks" / "sample_002.jpg").unlink()
    (root / "masks" / "sample_003.jpg").unlink()
    with pytest.raises(DatasetError) as caught:
        find_pairs(root)
    message = str(caught.value)
    assert "sample_002.jpg" in message
    assert "sample_003.jpg" in message
    assert len(message.splitlines()) == 2


def test_empty_images_folder_raises(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        find_pairs(tmp_path)


@pytest.mark.parametrize("missing", ["root", "images", "masks"])
def test_missing_folder_raises(synthetic_dataset, tmp_path, missing):
    if missing == "root":
        root = tmp_path / "does-not-exist"
        expected = "images"
    else:
        root = synthetic_dataset()
        for path in (root / missing).iterdir():
            path.unlink()
        (root / missing).rmdir()
        expected = missing
    with pytest.raises(DatasetError, match=expected):
        find_pairs(root)


# --- splits -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(800, 100, 100), (0.8, 0.1, 0.1)])
def test_make_splits_counts_and_fractions(sizes):
    splits = make_splits(FAKE_NAMES, sizes, seed=42)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [800, 100, 100]
    members = [set(splits[k]) for k in ("train", "val", "test")]
    assert not members[0] & members[1]
    assert not members[0] & members[2]
    assert not members[1] & members[2]
    assert set().union(*members) == set(FAKE_NAMES)
    for key in ("train", "val", "test"):
        assert splits[key] == sorted(splits[key])


def test_make_splits_is_deterministic_and_order_independent():
    first = make_splits(FAKE_NAMES, (800, 100, 100), seed=42)
    assert make_splits(FAKE_NAMES, (800, 100, 100), seed=42) == first
    assert make_splits(list(reversed(FAKE_NAMES)), (800, 100, 100), seed=42) == first
    assert make_splits(FAKE_NAMES, (800, 100, 100), seed=43) != first
    assert make_splits(FAKE_NAMES, (800, 100, 100), seed=43)["test"] != first["test"]


def test_make_splits_counts_and_fractions_agree():
    assert make_splits(FAKE_NAMES, (800, 100, 100), seed=7) == make_splits(FAKE_NAMES, (0.8, 0.1, 0.1), seed=7)


def test_make_splits_smaller_than_dataset():
    splits = make_splits(FAKE_NAMES, (10, 5, 5), seed=0)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [10, 5, 5]
    splits = make_splits(FAKE_NAMES[:10], (0.6, 0.2, 0.2), seed=0)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [6, 2, 2]


@pytest.mark.parametrize("sizes", [(900, 100, 100), (1001, 0, 0), (0, 0, 1001)])
def test_make_splits_too_large_raises(sizes):
    with pytest.raises(ValueError, match="1000"):
        make_splits(FAKE_NAMES, sizes, seed=0)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("800,100,100", [800.0, 100.0, 100.0]),
        ("0.8, 0.1, 0.1", [0.8, 0.1, 0.1]),
        ((0.7, 0.2, 0.1), [0.7, 0.2, 0.1]),
        ([8, 1, 1], [8.0, 1.0, 1.0]),
    ],
)
def test_parse_split_sizes(text, expected):
    assert parse_split_sizes(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["800,100", "1,2,3,4", "800,-1,100", "a,b,c"])
def test_parse_split_sizes_rejects(text):
    with pytest.raises(ValueError):
        parse_split_sizes(text)


def test_save_and_load_splits_round_trip(tmp_path):
    splits = make_splits(FAKE_NAMES[:20], (10, 5, 5), seed=1)
    path = tmp_path / "run" / "splits.json"
    save_splits(splits, path)
    assert load_splits(path) == splits
    assert json.loads(path.read_text()) == splits
    assert sorted(p.name for p in path.parent.iterdir()) == ["splits.json"]


@pytest.mark.parametrize(
    "content, match",
    [
        (b"not json", "cannot read splits"),
        (json.dumps({"train": [], "val": []}).encode(), "lists of names"),
        (json.dumps([1, 2, 3]).encode(), "lists of names"),
        (b'{"train": ["\xff\xfe"], "val": [], "test": []}', "cannot read splits"),  # not UTF-8
        (json.dumps({"train": ["a", "b", "c"], "val": ["b", "c"], "test": ["c"]}).encode(), "overlap: 2 names"),
        (json.dumps({"train": ["a", "b", "a"], "val": ["c"], "test": []}).encode(), "1 names appear twice"),
    ],
)
def test_load_splits_rejects_bad_files(tmp_path, content, match):
    path = tmp_path / "splits.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as caught:
        load_splits(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_parse_split_sizes_names_the_problem():
    with pytest.raises(ValueError, match="three numbers .*'a,b,c'"):
        parse_split_sizes("a,b,c")


# --- loading ----------------------------------------------------------------------------------------


def test_load_pairs_shapes_and_dtypes(synthetic_dataset):
    root = synthetic_dataset(mask_suffix=".jpg")
    samples = find_pairs(root)
    pairs = load_pairs(samples, image_size=32, workers=2)
    assert isinstance(pairs, CachedPairs)
    assert pairs.names == [s.name for s in samples]
    assert pairs.images.shape == (4, 3, 32, 32)
    assert pairs.images.dtype == torch.uint8
    assert pairs.masks.shape == (4, 32, 32)
    assert pairs.masks.dtype == torch.uint8
    assert set(pairs.masks.unique().tolist()) == {0, 1}
    for index in range(4):
        polyp = pairs.masks[index].bool()
        assert 0 < polyp.sum() < polyp.numel()
        # The synthetic polyp is brighter than the background: the mask lines up with the image.
        brightness = pairs.images[index].float().mean(0)
        assert brightness[polyp].mean() > brightness[~polyp].mean() + 60


def test_load_pairs_keeps_size_when_already_right(synthetic_dataset):
    root = synthetic_dataset(sizes=[(64, 64)], mask_suffix=".png")
    pairs = load_pairs(find_pairs(root), image_size=64, workers=1)
    from polypseg.images import read_image, read_mask

    np.testing.assert_array_equal(pairs.images[0].permute(1, 2, 0).numpy(), read_image(root / "images/sample_000.jpg"))
    np.testing.assert_array_equal(pairs.masks[0].numpy(), read_mask(root / "masks/sample_000.png") >= 128)


def test_cached_pairs_subset_and_dataset(synthetic_dataset):
    pairs = load_pairs(find_pairs(synthetic_dataset()), image_size=32, workers=1)
    subset = pairs.subset(["sample_003", "sample_001"])
    assert subset.names == ["sample_003", "sample_001"]
    assert torch.equal(subset.images[0], pairs.images[3])
    assert torch.equal(subset.masks[1], pairs.masks[1])
    with pytest.raises(ValueError, match="nope"):
        pairs.subset(["sample_000", "nope"])
    dataset = TensorPairDataset(subset)
    assert len(dataset) == 2
    image, mask = dataset[1]
    assert torch.equal(image, pairs.images[1])
    assert torch.equal(mask, pairs.masks[1])


def test_load_pairs_unreadable_image_names_it(synthetic_dataset):
    root = synthetic_dataset()
    (root / "images" / "x.jpg").write_text("definitely not a JPEG")
    (root / "masks" / "x.png").write_bytes((root / "masks" / "sample_001.jpg").read_bytes())
    with pytest.raises(DatasetError) as caught:
        load_pairs(find_pairs(root), image_size=32, workers=2)
    message = str(caught.value)
    assert "x.jpg" in message
    assert len(message.splitlines()) == 1


def test_load_pairs_lists_every_problem(synthetic_dataset):
    root = synthetic_dataset()
    (root / "images" / "sample_000.jpg").write_bytes(b"")
    (root / "masks" / "sample_002.jpg").write_text("broken")
    with pytest.raises(DatasetError) as caught:
        load_pairs(find_pairs(root), image_size=32, workers=2)
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert any("images/sample_000.jpg" in line for line in lines)
    assert any("masks/sample_002.jpg" in line for line in lines)


def test_mask_of_other_size_names_the_mask(synthetic_dataset, write_mask):
    root = synthetic_dataset(mask_suffix=".png")
    write_mask(root / "masks" / "sample_001.png", size=(32, 32))  # its image is 64x64
    with pytest.raises(DatasetError) as caught:
        load_pairs(find_pairs(root), image_size=32, workers=1)
    message = str(caught.value)
    assert "sample_001.png" in message
    assert "32x32" in message
    assert "64x64" in message


def test_load_pairs_empty_raises():
    with pytest.raises(DatasetError):
        load_pairs([], image_size=32)


def test_real_subset_loads(real_subset):
    samples = find_pairs(real_subset)
    assert len(samples) == 1000
    pairs = load_pairs(samples[:2], image_size=64, workers=2)
    assert pairs.images.shape == (2, 3, 64, 64)
    assert set(pairs.masks.unique().tolist()) == {0, 1}


# --- augmentation -----------------------------------------------------------------------------------


def _asymmetric_masks(batch: int, size: int = 64) -> torch.Tensor:
    masks = torch.zeros(batch, 1, size, size)
    masks[:, :, 8:28, 10:44] = 1.0  # off-centre bar: every flip and rotation moves it
    masks[:, :, 28:50, 10:22] = 1.0
    return masks


def test_augmentation_keeps_masks_binary_and_aligned():
    torch.manual_seed(0)
    augmentation = build_augmentation()
    masks = _asymmetric_masks(batch=8)
    images = masks.repeat(1, 3, 1, 1)  # every channel equals the mask: colour jitter keeps the ordering
    out_images, out_masks = augmentation(images, masks)
    assert out_images.shape == images.shape
    assert out_masks.shape == masks.shape
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    changed = 0
    for b in range(len(masks)):
        gray = out_images[b, 0]
        threshold = (gray.min() + gray.max()) / 2
        agreement = ((gray > threshold) == (out_masks[b, 0] > 0.5)).float().mean()
        assert agreement >= 0.95, f"sample {b}: image and mask disagree on {1 - agreement:.1%} of pixels"
        changed += int(not torch.equal(out_masks[b], masks[b]))
    assert changed >= 4, "the augmentation should move most masks"


def test_horizontal_flip_moves_image_and_mask_together():
    import kornia.augmentation as K

    # Flip-only run of the same joint mechanism build_augmentation uses (AugmentationSequential with a mask key).
    flip = K.AugmentationSequential(K.RandomHorizontalFlip(p=1.0), data_keys=["input", "mask"])
    masks = _asymmetric_masks(batch=2)
    images = torch.rand(2, 3, 64, 64)
    out_images, out_masks = flip(images, masks)
    assert torch.equal(out_masks, masks.flip(-1))
    torch.testing.assert_close(out_images, images.flip(-1))
