"""Which images an evaluation scores: the split of the weights' run, ground-truth boxes, dataset names.

The split comes from ``--splits FILE``, else from the ``splits.json`` of the run the weights belong to,
else it is recomputed from the seed and split sizes recorded in the weights' ``config.json`` (the same
deterministic split training made, :meth:`polypseg.weights.config.WeightsConfig.training_split`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from polypseg.data import find_pairs, load_splits, make_splits
from polypseg.errors import InputError, UsageError, one_line
from polypseg.files import expand_inputs
from polypseg.weights import WeightsLike, resolve

__all__ = [
    "BOXES_FILES",
    "calibration_paths",
    "dataset_names",
    "is_training_dataset",
    "read_truth_boxes",
    "resolve_split",
]

BOXES_FILES = ("kavsir_bboxes.json", "bboxes.json")


def read_truth_boxes(data_dir: str | Path, image_size: int) -> dict[str, list[tuple[int, int, int, int]]] | None:
    """Ground-truth polyp boxes scaled to the evaluation resolution, from Kvasir-SEG's bounding-box file.

    The file (``kavsir_bboxes.json``, misspelled as in the official archive, or ``bboxes.json``) maps
    an image name to ``{"height", "width", "bbox": [{"xmin", "ymin", "xmax", "ymax"}, ...]}``. Returns
    ``None`` when the folder has no such file (detection then uses the masks' connected regions).
    """
    for name in BOXES_FILES:
        path = Path(data_dir) / name
        if path.exists():
            break
    else:
        return None
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        boxes = {}
        for image, entry in entries.items():
            sx, sy = image_size / float(entry["width"]), image_size / float(entry["height"])
            boxes[image] = [
                (round(b["xmin"] * sx), round(b["ymin"] * sy), round(b["xmax"] * sx), round(b["ymax"] * sy))
                for b in entry["bbox"]
            ]
    # The file as read, and each entry's fields: not JSON, not UTF-8, a missing key, a string or 0 for a number.
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ArithmeticError, RecursionError) as error:
        raise InputError(path, f"not a bounding-box file of the Kvasir-SEG format ({one_line(error)})") from None
    return boxes


def resolve_split(
    weights: WeightsLike, data_dir: str | Path, split: str, splits_file: str | Path | None
) -> tuple[list[str], str]:
    """Names of the images to score, and where the split came from.

    ``split="all"`` takes every pair in the folder. Otherwise the split comes from ``splits_file``, else
    from the ``splits.json`` of the run the weights belong to, else it is recomputed from the seed and
    split sizes recorded in the weights' ``config.json`` (the same deterministic split training made).
    """
    names = [sample.name for sample in find_pairs(data_dir)]
    if split == "all":
        return names, "all images in the folder"
    if split not in ("train", "val", "test"):
        raise UsageError(f"--split must be train, val, test or all, got {split!r}")
    weights = resolve(weights)
    if splits_file is None:
        # A run folder keeps splits.json beside best/; a pushed Hub repository keeps it beside the weights.
        for candidate in (weights.folder / "splits.json", weights.folder.parent / "splits.json"):
            if candidate.exists():
                splits_file = candidate
                break
    if splits_file is not None:
        return load_splits(splits_file)[split], str(splits_file)
    recorded = weights.config.training_split()
    sizes, seed, max_images = recorded.split_sizes, recorded.seed, recorded.max_images
    pool = names[:max_images] if max_images else names
    return make_splits(pool, sizes, seed)[split], f"seeded split (seed {seed}, sizes {sizes})"


_KVASIR_SEG_NAME = re.compile(r"kvasir[-_ ]?seg", re.IGNORECASE)


def is_training_dataset(data_dir: str | Path, weights: WeightsLike) -> bool:
    """Whether ``data_dir`` is the dataset the weights were trained on, whose train/val/test split applies.

    True for a folder named like Kvasir-SEG (``kvasir-seg``, ``Kvasir-SEG``, ``kvasir_seg``) or with the
    folder name of the ``data_dir`` recorded in the weights' ``config.json``.
    """
    name = Path(data_dir).resolve().name
    if _KVASIR_SEG_NAME.search(name):
        return True
    trained_on = resolve(weights).config.trained_on
    return bool(trained_on) and Path(str(trained_on)).name == name


def dataset_names(data_dirs: Sequence[str | Path]) -> list[str]:
    """A distinct subfolder name per dataset folder: its own name, numbered when two share it."""
    names: list[str] = []
    for data_dir in data_dirs:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(data_dir).resolve().name) or "dataset"
        name, number = base, 2
        while name in names:
            name, number = f"{base}-{number}", number + 1
        names.append(name)
    return names


def calibration_paths(
    folder: str | Path | None, data_dir: str | Path, weights: WeightsLike, count: int = 100
) -> list[Path]:
    """Images for int8 calibration: up to ``count`` from ``folder``, else from the training split of ``data_dir``.

    The training split is the one the weights were trained with (:func:`resolve_split`), so calibration
    never sees validation or test images.
    """
    if folder is not None:
        paths, _ = expand_inputs([folder])
    else:
        names, _ = resolve_split(weights, data_dir, "train", None)
        by_name = {sample.name: sample.image_path for sample in find_pairs(data_dir)}
        unknown = [name for name in names if name not in by_name]
        if unknown:
            raise UsageError(f"{data_dir}: {len(unknown)} training split names are not in it, e.g. {unknown[0]!r}")
        paths = [by_name[name] for name in names]
    if not paths:
        raise InputError(folder or data_dir, "no calibration images")
    step = max(len(paths) // count, 1)
    return paths[::step][:count]
