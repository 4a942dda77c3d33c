"""What one image's prediction writes (``polypseg.inference.outputs``): the overlay, its format, output names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polypseg.classes import BOUNDARY, POLYP
from polypseg.inference import Predictor, overlay, predict_files

pytestmark = pytest.mark.precision  # run under both POLYPSEG_NATIVE_BF16 settings by make test


def test_overlay_tints_polyp_and_draws_boundary():
    image = np.full((4, 4, 3), 100, np.uint8)
    class_map = np.zeros((4, 4), np.uint8)
    class_map[1, 1] = POLYP
    class_map[2, 2] = BOUNDARY
    result = overlay(image, class_map, opacity=0.5)
    assert tuple(result[0, 0]) == (100, 100, 100)
    assert tuple(result[1, 1]) == (50, 150, 50)
    assert tuple(result[2, 2]) == (255, 220, 0)
    assert tuple(overlay(image, class_map, opacity=0.0)[1, 1]) == (100, 100, 100)


@pytest.mark.parametrize("overlay_format", ["png", "none"])
def test_overlay_format_png_or_none(tiny_unet, synthetic_dataset, tmp_path, overlay_format):
    data = synthetic_dataset(sizes=[(40, 56)] * 2)
    out = tmp_path / "out"
    summary = predict_files(
        Predictor(tiny_unet, image_size=64, precision="32"), [data / "images"], out, overlay_format=overlay_format
    )
    assert summary.ok
    names = sorted(p.name for p in out.iterdir())
    overlays = [name for name in names if "_overlay" in name]
    assert overlays == ([] if overlay_format == "none" else ["sample_000_overlay.png", "sample_001_overlay.png"])
    if overlay_format == "png":
        with Image.open(out / "sample_000_overlay.png") as written:
            assert written.format == "PNG" and written.size == (40, 56)
    with pytest.raises(ValueError, match="overlay format"):
        predict_files(
            Predictor(tiny_unet, image_size=64, precision="32"), [data / "images"], tmp_path / "x", overlay_format="gif"
        )


def test_output_stems_are_unique_by_construction():
    from polypseg.inference import output_stems

    paths = [Path(p) for p in ("a/x.jpg", "a/x-2.jpg", "b/x.jpg", "c/X.png", "d/x-3.jpg", "e/y.jpg")]
    stems = output_stems(paths)
    assert stems == ["x", "x-2", "x-4", "X-5", "x-3", "y"]
    # Distinct even where the file system ignores case.
    assert len({stem.casefold() for stem in stems}) == len(stems)
