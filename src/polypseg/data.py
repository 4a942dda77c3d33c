"""Kvasir-SEG style folders: list pairs, split them, decode once, cache as uint8 tensors, augment.

A dataset folder holds ``images/`` and ``masks/`` with the same file stems (any of
:data:`polypseg.images.IMAGE_SUFFIXES`). Images are resized to the training size with antialiased bilinear
resampling; masks are binarized at 128 and then resized with nearest neighbour. Everything is decoded
once and kept in memory as uint8 tensors, so an epoch never decodes a JPEG again.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from polypseg.errors import PolypsegError, UsageError, one_line
from polypseg.files import atomic_write_text
from polypseg.images import IMAGE_SUFFIXES, InputError, read_image, read_mask, resize_image, resize_mask

__all__ = [
    "CachedPairs",
    "DatasetError",
    "SPLIT_NAMES",
    "Sample",
    "TensorPairDataset",
    "build_augmentation",
    "find_pairs",
    "load_pairs",
    "load_splits",
    "make_splits",
    "parse_split_sizes",
    "save_splits",
]

SPLIT_NAMES = ("train", "val", "test")


class DatasetError(PolypsegError, ValueError):
    """The dataset folder cannot be used; the message lists every problem found, one per line."""


@dataclass(frozen=True)
class Sample:
    """One image/mask pair of a dataset folder."""

    name: str
    image_path: Path
    mask_path: Path


def _images_in(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by stem; hidden files and other suffixes (``Thumbs.db``, notes) are skipped."""
    images: dict[str, Path] = {}
    clashes: list[str] = []
    for path in sorted(folder.iterdir()):
        if not (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")):
            continue
        if path.stem in images:
            clashes.append(f"{path}: same name as {images[path.stem].name}; keep only one of them")
        images[path.stem] = path
    if clashes:
        raise DatasetError("\n".join(clashes))
    return images


def find_pairs(data_dir: str | Path) -> list[Sample]:
    """List the image/mask pairs of a dataset folder, sorted by name.

    Raises:
        DatasetError: The folder, ``images/`` or ``masks/`` is missing, holds no images, two files share
            a name (``a.jpg`` and ``a.png``), or an image has no mask (every missing mask is named).
    """
    data_dir = Path(data_dir)
    images_dir, masks_dir = data_dir / "images", data_dir / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: folder not found (expected {data_dir}/images and /masks)")
    images, masks = _images_in(images_dir), _images_in(masks_dir)
    if not images:
        raise DatasetError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    missing = [f"{path}: no mask with this name in {masks_dir}" for name, path in images.items() if name not in masks]
    if missing:
        raise DatasetError("\n".join(missing))
    return [Sample(name, path, masks[name]) for name, path in images.items()]


def parse_split_sizes(text: str | Sequence[float]) -> list[float]:
    """Parse ``"800,100,100"`` or ``"0.8,0.1,0.1"`` (or a sequence) into three split sizes."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except (TypeError, ValueError):
        raise UsageError(f"split sizes need three numbers (train,val,test), got {text!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values):
        raise UsageError(f"split sizes need three non-negative values (train,val,test), got {text!r}")
    return values


def make_splits(names: Sequence[str], sizes: Sequence[float], seed: int) -> dict[str, list[str]]:
    """Split ``names`` into train/val/test, deterministically for a given seed.

    Args:
        names: Sample names (order does not matter: they are sorted first).
        sizes: Three counts, or three fractions summing to at most 1 (the remainder of rounding goes to train).
        seed: Seed of the shuffle.

    Raises:
        UsageError: The sizes ask for more samples than there are.
    """
    ordered = sorted(names)
    total = len(ordered)
    if all(v <= 1 for v in sizes) and sum(sizes) <= 1.0 + 1e-9 and any(0 < v < 1 for v in sizes):
        val, test = (int(round(v * total)) for v in sizes[1:])
        train = total - val - test if abs(sum(sizes) - 1) < 1e-9 else int(round(sizes[0] * total))
    else:
        train, val, test = (int(v) for v in sizes)
    if train + val + test > total:
        raise UsageError(f"split sizes {train}/{val}/{test} need {train + val + test} samples, only {total} found")
    random.Random(seed).shuffle(ordered)
    return {
        "train": sorted(ordered[:train]),
        "val": sorted(ordered[train : train + val]),
        "test": sorted(ordered[train + val : train + val + test]),
    }


def save_splits(splits: dict[str, list[str]], path: str | Path) -> None:
    """Write splits as JSON (atomically)."""
    atomic_write_text(Path(path), json.dumps(splits, indent=1) + "\n")


def load_splits(path: str | Path) -> dict[str, list[str]]:
    """Read a ``splits.json`` written by :func:`save_splits`.

    Raises:
        InputError: Naming the file: unreadable, not UTF-8 JSON, not three lists of names, or a name
            that appears twice (in one split or in two: train, val and test must not overlap).
    """
    path = Path(path)
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON or not UTF-8
        raise InputError(path, f"cannot read splits ({one_line(error)[:200]})") from None
    if not isinstance(splits, dict) or not all(isinstance(splits.get(k), list) for k in SPLIT_NAMES):
        raise InputError(path, "splits must map 'train', 'val' and 'test' to lists of names")
    result = {key: [str(name) for name in splits[key]] for key in SPLIT_NAMES}
    repeated = sorted(name for names in result.values() for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise InputError(path, f"{len(repeated)} names appear twice in one split, e.g. {repeated[0]!r}")
    seen: dict[str, str] = {}
    shared: dict[str, tuple[str, str]] = {}
    for key, names in result.items():
        for name in names:
            if name in seen:
                shared.setdefault(name, (seen[name], key))
            seen[name] = key
    if shared:
        first = min(shared)
        where = " and ".join(shared[first])
        raise InputError(
            path,
            f"train, val and test overlap: {len(shared)} names are in more than one split, e.g. {first!r} (in {where})",
        )
    return result


@dataclass
class CachedPairs:
    """Decoded, resized samples: ``images`` (N, 3, S, S) uint8, ``masks`` (N, S, S) uint8 in {0, 1}."""

    names: list[str]
    images: torch.Tensor
    masks: torch.Tensor

    def subset(self, names: Sequence[str]) -> CachedPairs:
        """The samples called ``names``, in that order."""
        index = {name: i for i, name in enumerate(self.names)}
        unknown = [name for name in names if name not in index]
        if unknown:
            raise UsageError(f"{len(unknown)} split names are not in the dataset, e.g. {unknown[0]!r}")
        rows = torch.tensor([index[name] for name in names], dtype=torch.long)
        return CachedPairs(list(names), self.images[rows], self.masks[rows])


def _load_one(sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray]:
    image = read_image(sample.image_path)
    mask = read_mask(sample.mask_path)
    if image.shape[:2] != mask.shape:
        raise InputError(
            sample.mask_path,
            f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {image.shape[1]}x{image.shape[0]}",
        )
    return resize_image(image, (size, size)), resize_mask(mask, (size, size))


def load_pairs(samples: Sequence[Sample], image_size: int = 256, workers: int = 4) -> CachedPairs:
    """Decode and resize every sample once.

    Raises:
        DatasetError: Listing every unreadable image or mask (one line each) before any training starts.
    """
    if not samples:
        raise DatasetError("no samples to load")
    images = torch.empty((len(samples), 3, image_size, image_size), dtype=torch.uint8)
    masks = torch.empty((len(samples), image_size, image_size), dtype=torch.uint8)
    problems: list[str] = []

    def load(i: int) -> None:
        try:
            image, mask = _load_one(samples[i], image_size)
        except InputError as error:
            problems.append(str(error))
            return
        images[i] = torch.tensor(image).permute(2, 0, 1)
        masks[i] = torch.tensor(mask)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(load, range(len(samples))))
    if problems:
        raise DatasetError("\n".join(sorted(problems)))
    return CachedPairs([s.name for s in samples], images, masks)


class TensorPairDataset(Dataset):
    """A map-style dataset over :class:`CachedPairs`: yields ``(image uint8 (3,S,S), mask uint8 (S,S))``."""

    def __init__(self, pairs: CachedPairs) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pairs.images[index], self.pairs.masks[index]


def build_augmentation(strength: str = "strong") -> nn.Module | None:
    """Joint image+mask augmentation (kornia) at one of the presets of ``TrainConfig.augment``.

    - ``"none"``: no augmentation (returns ``None``).
    - ``"light"``: flips, small rotations/scale/shift, mild colour jitter: cheap to learn in short runs.
    - ``"robust"``: for images from other hospitals and scopes: flips, rotation, scale 0.75-1.25, shift,
      stronger colour jitter (brightness, contrast, saturation, hue), gamma, Gaussian blur and noise.
    - ``"strong"``: the original preset: flips, any rotation, scale, shift, colour jitter.

    The returned module takes ``(images float (B,3,H,W), masks float (B,1,H,W))`` and returns both,
    geometrically transformed the same way (masks with nearest resampling).

    Example:
        >>> build_augmentation("none") is None
        True
    """
    if strength == "none":
        return None
    import kornia.augmentation as K

    if strength == "light":
        steps = [
            K.RandomHorizontalFlip(),
            K.RandomVerticalFlip(),
            K.RandomAffine(degrees=15.0, translate=(0.05, 0.05), scale=(0.9, 1.1), p=0.5),
            K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02, p=0.5),
        ]
    elif strength == "robust":
        steps = [
            K.RandomHorizontalFlip(),
            K.RandomVerticalFlip(),
            K.RandomAffine(degrees=30.0, translate=(0.08, 0.08), scale=(0.75, 1.25), p=0.6),
            K.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.04, p=0.8),
            K.RandomGamma(gamma=(0.7, 1.4), p=0.3),
            K.RandomGaussianBlur(kernel_size=(5, 5), sigma=(0.1, 1.5), p=0.25),
            K.RandomGaussianNoise(mean=0.0, std=0.02, p=0.2),
        ]
    elif strength == "strong":
        steps = [
            K.RandomHorizontalFlip(),
            K.RandomVerticalFlip(),
            K.RandomAffine(degrees=180.0, translate=(0.1, 0.1), scale=(0.75, 1.25), p=0.7),
            K.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03, p=0.7),
        ]
    else:
        raise ValueError(f"unknown augmentation {strength!r} (none, light, robust, strong)")
    return K.AugmentationSequential(*steps, data_keys=["input", "mask"])
