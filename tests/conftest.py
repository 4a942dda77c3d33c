"""Shared fixtures for the polypseg tests.

Fixtures here are generic so that every test module (model, data, training, inference, CLI) can use them:

* ``synthetic_dataset``: a factory writing a tiny Kvasir-SEG style folder into ``tmp_path``.
* ``real_subset``: the path of the real Kvasir-SEG copy shared with the project (skips when absent).
* ``write_image`` / ``write_mask``: helpers to put one image or mask file anywhere.
* ``tiny_unet``: a freshly initialised ``UNet(base_channels=8)`` in eval mode.
* ``partial_polyp_weights``: untrained weights whose polyp class wins on a chosen share of an image.
* ``stand_in_hub``: a stand-in Hugging Face Hub on 127.0.0.1 (``hub_server.py``), huggingface_hub pointed at it.

Plain helpers that test modules import (``tiny_config``, ``REPO_ROOT``, ...) live in ``helpers.py``; fixtures
used by one folder only live in that folder's ``conftest.py``.

Torch runs single-threaded in the tests (override with ``POLYPSEG_TEST_THREADS``): on the tiny tensors
used here, extra threads only add overhead, and on a busy machine they make a forward pass ~10x slower.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import REAL_DATASET_DIR

#: (width, height) of the images the synthetic dataset writes by default: non-square and square sizes.
DEFAULT_SYNTHETIC_SIZES: tuple[tuple[int, int], ...] = ((70, 50), (64, 64), (48, 80), (64, 64))


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(int(os.environ.get("POLYPSEG_TEST_THREADS", "1")))


def ellipse_mask(height: int, width: int, center: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    """A (height, width) uint8 mask, 255 inside the ellipse ``center`` = (y, x), ``radii`` = (ry, rx), else 0."""
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((yy - center[0]) / radii[0]) ** 2 + ((xx - center[1]) / radii[1]) ** 2 <= 1.0
    return np.where(inside, 255, 0).astype(np.uint8)


def _write_array(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(array).save(path, quality=95)
    else:
        Image.fromarray(array).save(path)
    return path


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """Write an RGB uint8 array (H, W, 3) or a random image of ``size`` = (width, height) to ``path``.

    Usage: ``write_image(path, size=(70, 50), seed=0)`` or ``write_image(path, array=rgb)``.
    """

    def write(path: Path, size: tuple[int, int] = (64, 64), seed: int = 0, array: np.ndarray | None = None) -> Path:
        if array is None:
            width, height = size
            array = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        return _write_array(np.asarray(array, dtype=np.uint8), Path(path))

    return write


@pytest.fixture
def write_mask() -> Callable[..., Path]:
    """Write a 0/255 ellipse mask of ``size`` = (width, height) (or a given uint8 array) to ``path``.

    Usage: ``write_mask(path, size=(70, 50))`` or ``write_mask(path, array=mask)``.
    """

    def write(path: Path, size: tuple[int, int] = (64, 64), array: np.ndarray | None = None) -> Path:
        if array is None:
            width, height = size
            array = ellipse_mask(height, width, (height / 2, width / 2), (height / 4, width / 3))
        return _write_array(np.asarray(array, dtype=np.uint8), Path(path))

    return write


@pytest.fixture
def synthetic_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a tiny Kvasir-SEG style folder and returning its path.

    The folder holds ``images/<name>.jpg`` (random RGB, with a brighter ellipse where the polyp is) and
    ``masks/<name>.<mask_suffix>`` (0/255 ellipse, same size as its image). Names are ``sample_000``,
    ``sample_001``, ... in sorted order. Calling the factory twice with different ``name`` gives two folders.

    Args of the factory:
        sizes: (width, height) of each image; defaults to :data:`DEFAULT_SYNTHETIC_SIZES` (4 images).
        mask_suffix: ``".jpg"`` (like Kvasir-SEG, values near 0 and 255) or ``".png"`` (exactly 0/255).
        name: Folder name under ``tmp_path``.
        seed: Seed of the random images and ellipse positions.

    Example:
        >>> def test_something(synthetic_dataset):
        ...     root = synthetic_dataset(sizes=[(64, 64)] * 6, mask_suffix=".png")
        ...     assert len(list((root / "images").iterdir())) == 6
    """

    def make(
        sizes: Sequence[tuple[int, int]] = DEFAULT_SYNTHETIC_SIZES,
        mask_suffix: str = ".jpg",
        name: str = "kvasir-synthetic",
        seed: int = 0,
    ) -> Path:
        root = tmp_path / name
        rng = np.random.default_rng(seed)
        for index, (width, height) in enumerate(sizes):
            stem = f"sample_{index:03d}"
            center = (rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width)
            radii = (rng.uniform(0.15, 0.3) * height, rng.uniform(0.15, 0.3) * width)
            mask = ellipse_mask(height, width, center, radii)
            image = rng.integers(0, 120, size=(height, width, 3), dtype=np.uint8)
            image[mask > 0] += 120
            _write_array(image, root / "images" / f"{stem}.jpg")
            _write_array(mask, root / "masks" / f"{stem}{mask_suffix}")
        return root

    return make


@pytest.fixture(scope="session")
def real_subset() -> Path:
    """Path of the real Kvasir-SEG folder (``images/``, ``masks/``); skips the test when it is absent."""
    if not (REAL_DATASET_DIR / "images").is_dir() or not (REAL_DATASET_DIR / "masks").is_dir():
        pytest.skip(f"real Kvasir-SEG not found at {REAL_DATASET_DIR}")
    return REAL_DATASET_DIR


@pytest.fixture
def tiny_unet() -> torch.nn.Module:
    """A freshly initialised ``UNet(3, 3, base_channels=8)`` in eval mode (seeded, so reproducible)."""
    from polypseg.model import UNet

    torch.manual_seed(0)
    return UNet(in_channels=3, num_classes=3, base_channels=8).eval()


@pytest.fixture(scope="session")
def partial_polyp_weights() -> Callable[..., Path]:
    """Factory of untrained width-8 weights whose polyp class wins on a chosen share of an image's pixels.

    A fresh U-Net calls every pixel one class; shifting the classifier's bias makes polyp beat background
    on ``polyp_share`` of ``image``'s pixels (at 64x64) and the boundary class never win, so areas and
    counts have something to disagree about. Usage: ``partial_polyp_weights(image, folder, 0.3)``.
    """

    def make(image: np.ndarray, folder: Path, polyp_share: float = 0.3) -> Path:
        from polypseg.images import resize_image
        from polypseg.model import UNet
        from polypseg.weights import save_pretrained

        torch.manual_seed(0)
        model = UNet(base_channels=8).eval()
        pixels = torch.from_numpy(resize_image(image, (64, 64)).copy()).permute(2, 0, 1)[None] / 255.0
        with torch.no_grad():
            logits = model(pixels)[0]
            model.classifier.bias[1] -= (logits[1] - logits[0]).flatten().quantile(1.0 - polyp_share)
            model.classifier.bias[2] = -30.0
        return save_pretrained(model, folder, metadata={"input_size": [64, 64]})

    return make


@pytest.fixture
def stand_in_hub(tmp_path, monkeypatch):
    """A running stand-in Hub, with huggingface_hub pointed at it and at an empty cache in ``tmp_path``."""
    from huggingface_hub import constants

    from hub_server import StandInHub
    from polypseg.weights import hub

    server = StandInHub()
    monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    monkeypatch.setattr(hub, "_downloaded", {})
    yield server
    server.close()
