"""Reading images and masks, and writing files atomically.

Every reader raises :class:`InputError` with a one-line message that names the file and the problem.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "InputError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "read_image",
    "read_mask",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
#: Larger images are refused (Pillow's decompression-bomb guard, made an error).
MAX_IMAGE_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class InputError(ValueError):
    """A file that cannot be used; ``str(error)`` is a one-line message naming it."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, not an image") from None
    except UnidentifiedImageError:
        raise InputError(path, "not an image file Pillow can read") from None
    except Image.DecompressionBombError:
        raise InputError(path, f"image larger than {MAX_IMAGE_PIXELS:,} pixels, refused") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(path, f"cannot decode image ({' '.join(str(error).split())})") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB.

    EXIF orientation is applied; alpha is dropped; grayscale, palette, CMYK and 16-bit are converted.
    """
    path = Path(path)
    image = _open(path)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        scaled = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if scaled.max(initial=0) > 255 else 255.0
        image = Image.fromarray((scaled / peak * 255).round().astype(np.uint8))
    array = np.asarray(image.convert("RGB"))
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise InputError(path, "image has no pixels")
    return array


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask as (H, W) uint8 grayscale (0-255); binarize it with :func:`polypseg.classes.binarize_mask`."""
    path = Path(path)
    image = _open(path)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        return (
            np.where(values > 0, 255, 0).astype(np.uint8)
            if values.max(initial=0) <= 1
            else (np.clip(values / max(values.max(), 1) * 255, 0, 255).astype(np.uint8))
        )
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8) * 255
    return np.asarray(image.convert("L"))


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        os.replace(temporary_path, path)
    finally:
        temporary_path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, then rename)."""
    with atomic_write(path) as temporary:
        temporary.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(path: str | Path, save: Callable[[Path], None]) -> None:
    """Call ``save(temporary_path)`` and rename the result to ``path``."""
    with atomic_write(path) as temporary:
        save(temporary)
