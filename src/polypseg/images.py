"""Images and masks: read them with one-line errors, resize them, and turn them into the network's input.

Every reader raises :class:`InputError` with a one-line message that names the file and the problem, and
nothing else: whatever Pillow raises on a damaged or hostile file becomes an :class:`InputError`.

:func:`network_input` is the one place where images become the network's input (resized exactly as in
training, float32 in [0, 1], channels first); :class:`polypseg.inference.Predictor`, training's cache and
the export's calibration all use it or the resizers it is built on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from polypseg.classes import binarize_mask
from polypseg.errors import InputError, one_line

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "InputError",
    "network_input",
    "read_image",
    "read_mask",
    "resize_image",
    "resize_mask",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
#: Larger images are refused before they are decoded (decompression-bomb guard). Pillow refuses images
#: over twice its ``MAX_IMAGE_PIXELS`` itself and only warns between 1x and 2x; :func:`read_image` makes
#: the whole range above the limit an :class:`InputError` (Pillow may still print its warning once).
MAX_IMAGE_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f"{image.width}x{image.height} = {image.width * image.height:,}")
            image.load()
            return ImageOps.exif_transpose(image)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, not an image") from None
    except PermissionError:
        raise InputError(path, "permission denied") from None
    except UnidentifiedImageError:
        raise InputError(path, "not an image file Pillow can read") from None
    except Image.DecompressionBombError as error:
        raise InputError(path, f"image larger than {MAX_IMAGE_PIXELS:,} pixels, refused ({one_line(error)})") from None
    except Exception as error:  # Pillow's decoders raise many types on damaged files
        raise InputError(path, f"cannot decode image ({one_line(error)})") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB.

    EXIF orientation is applied; alpha is dropped; grayscale, palette, CMYK and 16-bit are converted.
    """
    path = Path(path)
    image = _open(path)
    if image.mode == "F":
        image = Image.fromarray(_float_to_uint8(path, np.asarray(image, dtype=np.float64)))
    try:
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            scaled = np.asarray(image, dtype=np.float64)
            peak = 65535.0 if scaled.max(initial=0) > 255 else 255.0
            image = Image.fromarray(np.clip(scaled / peak * 255, 0, 255).round().astype(np.uint8))
        array = np.asarray(image.convert("RGB"))
    except Exception as error:  # exotic modes Pillow cannot convert
        raise InputError(path, f"cannot convert image to RGB ({one_line(error)})") from None
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise InputError(path, "image has no pixels")
    return array


def _float_to_uint8(path: Path, values: np.ndarray) -> np.ndarray:
    """A float image to uint8: values in [0, 1] are scaled to 0-255, values in [0, 255] kept; else refused."""
    if not np.isfinite(values).all():
        raise InputError(path, "floating-point image holds NaN or infinite values")
    low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if low < 0 or high > 255:
        raise InputError(path, f"floating-point image with values {low:g} to {high:g}; expected 0-1 or 0-255")
    scale = 255.0 if high <= 1 else 1.0
    return np.clip(values * scale, 0, 255).round().astype(np.uint8)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask as (H, W) uint8 grayscale (0-255); binarize it with :func:`polypseg.classes.binarize_mask`.

    A colour mask (RGB, palette, CMYK...) gives the largest of its red, green and blue values, so any clearly
    non-black colour (a pure red polyp on black, for instance) is a polyp; for grey masks stored as RGB, such
    as Kvasir-SEG's JPEGs, that is their grey value. Alpha is ignored.
    """
    path = Path(path)
    image = _open(path)
    try:
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            mask = (
                np.where(values > 0, 255, 0).astype(np.uint8)
                if values.max(initial=0) <= 1
                else (np.clip(values / max(values.max(), 1) * 255, 0, 255).astype(np.uint8))
            )
        elif image.mode == "1":
            mask = np.asarray(image, dtype=np.uint8) * 255
        elif image.mode in ("L", "LA", "La"):
            mask = np.asarray(image.convert("L"))
        else:  # colour: the brightest channel, so that a red or green mask is not read as dark grey
            mask = np.asarray(image.convert("RGB")).max(axis=2)
    except Exception as error:  # exotic modes Pillow cannot convert
        raise InputError(path, f"cannot convert mask to grayscale ({one_line(error)})") from None
    if mask.shape[0] < 1 or mask.shape[1] < 1:
        raise InputError(path, "mask has no pixels")
    return mask


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W, 3) uint8 to ``size`` = (height, width): bilinear, antialiased when shrinking."""
    if image.shape[:2] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Binarize a mask at 128, then resize it to ``size`` = (height, width) with nearest neighbour; returns bool."""
    binary = binarize_mask(mask)
    if binary.shape == size:
        return binary
    resized = Image.fromarray(binary.astype(np.uint8)).resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(resized) > 0


def network_input(images: Sequence[np.ndarray], image_size: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB images of any sizes -> the network's input, float32 (N, 3, S, S) in [0, 1].

    Each image is resized to ``image_size`` squared as in training (:func:`resize_image`).
    """
    size = (image_size, image_size)
    batch = np.stack([resize_image(image, size) for image in images])
    return batch.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
