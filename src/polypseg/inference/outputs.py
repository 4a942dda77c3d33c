"""What ``predict`` writes per image: the palette class map, the binary mask, the overlay, and their names.

Per input ``STEM`` (:func:`output_stems`: the file's stem, ``STEM-N`` when stems repeat):
``STEM_classes.png`` (palette: background black, polyp green, boundary yellow), ``STEM_mask.png``
(0/255) and ``STEM_overlay.jpg`` (or ``.png``, or none), each written atomically.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from polypseg.classes import BOUNDARY, POLYP
from polypseg.errors import UsageError
from polypseg.files import atomic_save
from polypseg.inference.predictor import Prediction, validate_opacity

__all__ = [
    "CLASS_PALETTE",
    "CSV_COLUMNS",
    "JPEG_QUALITY",
    "OUTPUT_SUFFIXES",
    "OVERLAY_FORMATS",
    "class_map_image",
    "csv_row",
    "output_stems",
    "output_suffixes",
    "overlay",
    "write_outputs",
]

#: Colours of the class-map PNG palette: background black, polyp green, boundary yellow.
CLASS_PALETTE: tuple[tuple[int, int, int], ...] = ((0, 0, 0), (0, 200, 0), (255, 220, 0))
#: Overlay file formats: JPEG (default; much faster to encode than PNG, see README), lossless PNG, or none.
OVERLAY_FORMATS = ("jpg", "png", "none")
JPEG_QUALITY = 90
CSV_COLUMNS = ("file", "width", "height", "polyp_area_percent", "polyps", "boxes", "stem")


def overlay(image: np.ndarray, class_map: np.ndarray, opacity: float = 0.4) -> np.ndarray:
    """Tint the polyp green over ``image`` and draw the boundary class in solid yellow.

    Args:
        image: (H, W, 3) uint8 RGB.
        class_map: (H, W) class map of the same size.
        opacity: Strength of the polyp tint, 0 (none) to 1 (solid).

    Returns:
        (H, W, 3) uint8 RGB.

    Raises:
        ValueError: ``opacity`` is not a number from 0 to 1.
    """
    opacity = validate_opacity(opacity)
    result = image.astype(np.float32)
    polyp = class_map == POLYP
    tint = np.array(CLASS_PALETTE[POLYP], dtype=np.float32)
    result[polyp] = (1 - opacity) * result[polyp] + opacity * tint
    result[class_map == BOUNDARY] = CLASS_PALETTE[BOUNDARY]
    return result.round().astype(np.uint8)


def _name_key(stem: str) -> str:
    """Names that one file system may take for the same (case-insensitive, Unicode-normalising ones)."""
    return unicodedata.normalize("NFC", stem).casefold()


def output_stems(paths: Sequence[Path]) -> list[str]:
    """Output name stems for input paths, all different: the file stem, or ``STEM-N`` when stems repeat.

    The first path with a stem keeps it; each later one gets ``STEM-2``, ``STEM-3``... with the smallest
    number whose name is neither another input's stem nor already given, so no two inputs share a name
    (``a/x.jpg``, ``a/x-2.jpg``, ``b/x.jpg`` -> ``x``, ``x-2``, ``x-3``). Names are compared ignoring case
    and Unicode normalisation, as macOS and Windows file systems do.
    """
    stems = [path.stem for path in paths]
    taken = {_name_key(stem) for stem in stems}
    first: set[str] = set()
    result = []
    for stem in stems:
        key = _name_key(stem)
        if key not in first:
            first.add(key)
            result.append(stem)
            continue
        number = 2
        while _name_key(f"{stem}-{number}") in taken:
            number += 1
        taken.add(_name_key(f"{stem}-{number}"))
        result.append(f"{stem}-{number}")
    return result


def output_suffixes(overlay_format: str = "jpg") -> tuple[str, ...]:
    """File name suffixes of one input's outputs (``STEM`` + suffix) for an overlay format."""
    if overlay_format not in OVERLAY_FORMATS:
        raise UsageError(f"overlay format must be one of {', '.join(OVERLAY_FORMATS)}, got {overlay_format!r}")
    return ("_classes.png", "_mask.png") + (() if overlay_format == "none" else (f"_overlay.{overlay_format}",))


#: The image outputs written per input with the default JPEG overlay.
OUTPUT_SUFFIXES = output_suffixes("jpg")


def _save_png(path: Path, image: Image.Image) -> None:
    # zlib level 1: several times faster than the default 6, and masks and class maps compress well anyway.
    atomic_save(path, lambda temporary: image.save(temporary, format="PNG", compress_level=1))


def write_outputs(
    out_dir: Path, stem: str, image: np.ndarray, prediction: Prediction, opacity: float, overlay_format: str = "jpg"
) -> None:
    """Write one image's outputs (:func:`output_suffixes`) into ``out_dir``, each atomically."""
    _save_png(out_dir / f"{stem}_classes.png", class_map_image(prediction.class_map))
    _save_png(out_dir / f"{stem}_mask.png", Image.fromarray(prediction.polyp_mask.astype(np.uint8) * 255))
    if overlay_format == "none":
        return
    picture = Image.fromarray(overlay(image, prediction.class_map, opacity))
    if overlay_format == "png":
        _save_png(out_dir / f"{stem}_overlay.png", picture)
    else:
        atomic_save(
            out_dir / f"{stem}_overlay.jpg",
            lambda temporary: picture.save(temporary, format="JPEG", quality=JPEG_QUALITY),
        )


def class_map_image(class_map: np.ndarray) -> Image.Image:
    """A class map as a palette PNG image (:data:`CLASS_PALETTE`)."""
    image = Image.fromarray(class_map, mode="P")
    palette = [value for colour in CLASS_PALETTE for value in colour]
    image.putpalette(palette + [0] * (768 - len(palette)))
    return image


def csv_row(file: str, stem: str, image: np.ndarray, prediction: Prediction) -> dict[str, object]:
    """One image's row of ``predictions.csv`` (:data:`CSV_COLUMNS`)."""
    return {
        "file": file,
        "width": image.shape[1],
        "height": image.shape[0],
        "polyp_area_percent": round(prediction.polyp_area_percent, 3),
        "polyps": len(prediction.polyps),
        "boxes": json.dumps([list(region.box) for region in prediction.polyps]),
        "stem": stem,
    }
