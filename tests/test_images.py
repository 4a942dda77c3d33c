"""Reading images and masks (``polypseg.images``): colour modes, EXIF, bad files in one line, colour masks,
floating-point images, resizing and the network's input."""

from __future__ import annotations

import io as stdlib_io

import numpy as np
import pytest
from PIL import Image

from polypseg.classes import binarize_mask
from polypseg.errors import InputError
from polypseg.images import network_input, read_image, read_mask, resize_image, resize_mask


def _gradient(height: int = 20, width: int = 30) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([yy * 10 % 256, xx * 8 % 256, (yy + xx) * 4 % 256], axis=-1).astype(np.uint8)


def test_rgb_png_round_trips_exactly(tmp_path):
    rgb = _gradient()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    image = read_image(tmp_path / "rgb.png")
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, rgb)


def test_grayscale_becomes_three_channels(tmp_path):
    gray = _gradient()[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    image = read_image(tmp_path / "gray.png")
    assert image.shape == (20, 30, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], gray)


def test_rgba_drops_alpha(tmp_path):
    rgba = np.concatenate([_gradient(), np.full((20, 30, 1), 77, np.uint8)], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    image = read_image(tmp_path / "rgba.png")
    assert image.shape == (20, 30, 3)
    np.testing.assert_array_equal(image, rgba[..., :3])


def test_palette_image_becomes_rgb(tmp_path):
    palette_image = Image.fromarray(_gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette_image.save(tmp_path / "palette.png")
    image = read_image(tmp_path / "palette.png")
    assert image.shape == (20, 30, 3)
    np.testing.assert_array_equal(image, np.asarray(palette_image.convert("RGB")))


def test_16_bit_png_is_scaled_to_8_bit(tmp_path):
    values = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = read_image(tmp_path / "deep.png")
    assert image.shape == (2, 2, 3)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], [[0, 255], [128, 1]])


def test_exif_rotation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(_gradient(20, 30)).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "rotated.jpg").shape == (30, 20, 3)
    assert read_mask(tmp_path / "rotated.jpg").shape == (30, 20)


def test_read_mask_gives_2d_uint8(tmp_path):
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:9] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(np.stack([mask] * 3, axis=-1)).save(tmp_path / "mask_rgb.png")
    Image.fromarray(mask > 0).save(tmp_path / "mask_1bit.png")
    for name in ("mask.png", "mask_rgb.png", "mask_1bit.png"):
        read = read_mask(tmp_path / name)
        assert read.shape == (10, 12), name
        assert read.dtype == np.uint8, name
        np.testing.assert_array_equal(read, mask, err_msg=name)


def _truncated_jpeg() -> bytes:
    buffer = stdlib_io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.mark.parametrize(
    "name, content",
    [
        ("empty.jpg", b""),
        ("truncated.jpg", _truncated_jpeg()),
        ("notes.jpg", b"this is a text file\nwith two lines\n"),
    ],
)
@pytest.mark.parametrize("reader", [read_image, read_mask])
def test_bad_files_raise_one_line_input_error(tmp_path, name, content, reader):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        reader(path)
    message = str(caught.value)
    assert name in message
    assert "\n" not in message
    assert caught.value.path == path
    assert isinstance(caught.value, ValueError)


def test_missing_file_and_directory_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(InputError, match="folder.png"):
        read_image(tmp_path / "folder.png")


# --------------------------------------------------------------------------------------------------
# Colour masks (issue 10, section 3, finding 8)


def _ellipse(height: int = 24, width: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return ((yy - height / 2) / (height / 3)) ** 2 + ((xx - width / 2) / (width / 3)) ** 2 <= 1


@pytest.mark.parametrize("colour", [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 30, 90)])
@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp"])
def test_a_colour_mask_on_black_is_read_as_polyp(tmp_path, colour, suffix):
    polyp = _ellipse()
    array = np.zeros((*polyp.shape, 3), np.uint8)
    array[polyp] = colour
    path = tmp_path / f"mask{suffix}"
    Image.fromarray(array).save(path, **({"quality": 95} if suffix == ".jpg" else {}))
    read = binarize_mask(read_mask(path))
    # JPEG blurs the ellipse's edge by a pixel or so; everything else is exact.
    assert (read != polyp).mean() < (0.03 if suffix == ".jpg" else 1e-9), (read != polyp).sum()


def test_a_palette_colour_mask_is_read_as_polyp(tmp_path):
    polyp = _ellipse()
    image = Image.fromarray(polyp.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 1: pure red
    image.save(tmp_path / "mask.png")
    np.testing.assert_array_equal(binarize_mask(read_mask(tmp_path / "mask.png")), polyp)


def test_grey_masks_stored_as_rgb_are_read_as_before(tmp_path):
    """Grey values (Kvasir-SEG: RGB JPEGs, 0-8 and 246-255) are their grey value, binarized at 128 as always."""
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(np.stack([values] * 3, axis=-1)).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "grey.png"), values)


def test_kvasir_seg_masks_binarize_exactly_as_their_grey_conversion(real_subset):
    for path in sorted((real_subset / "masks").iterdir())[:25]:
        with Image.open(path) as image:
            grey = np.asarray(image.convert("L"))
        np.testing.assert_array_equal(binarize_mask(read_mask(path)), grey >= 128, err_msg=path.name)


# --------------------------------------------------------------------------------------------------
# Floating-point images (finding 15)


def test_a_float_image_in_0_1_is_scaled_to_0_255(tmp_path):
    values = np.linspace(0.0, 1.0, 20 * 30, dtype=np.float32).reshape(20, 30)
    Image.fromarray(values, mode="F").save(tmp_path / "float.tif")
    image = read_image(tmp_path / "float.tif")
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], np.round(values * 255).astype(np.uint8))
    assert (image[..., 0] == image[..., 2]).all()


def test_a_float_image_in_0_255_is_kept(tmp_path):
    values = np.linspace(0.0, 255.0, 20 * 30, dtype=np.float32).reshape(20, 30)
    Image.fromarray(values, mode="F").save(tmp_path / "float.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "float.tif")[..., 1], np.round(values).astype(np.uint8))


@pytest.mark.parametrize("bad, problem", [(np.nan, "NaN"), (-3.0, "-3"), (70000.0, "70000")])
def test_a_float_image_that_cannot_be_meant_is_refused_in_one_line(tmp_path, bad, problem):
    values = np.full((8, 8), 0.5, np.float32)
    values[3, 3] = bad
    Image.fromarray(values, mode="F").save(tmp_path / "float.tif")
    with pytest.raises(InputError, match="float.tif") as caught:
        read_image(tmp_path / "float.tif")
    assert problem in str(caught.value) and "\n" not in str(caught.value)


# --- resizing ---------------------------------------------------------------------------------------


def test_resize_image_and_mask():
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    assert resize_image(image, (32, 48)).shape == (32, 48, 3)
    assert resize_image(image, (50, 70)) is image
    mask = np.where(np.arange(70)[None, :] < 35, 250, 5).repeat(50, 0).astype(np.uint8)
    resized = resize_mask(mask, (32, 32))
    assert resized.shape == (32, 32)
    assert resized.dtype == bool
    assert resized[:, :15].all()
    assert not resized[:, 17:].any()


def test_network_input_matches_training_resize(write_image, tmp_path):
    path = write_image(tmp_path / "a.jpg", size=(70, 50))
    batch = network_input([read_image(path)], 64)
    assert batch.shape == (1, 3, 64, 64) and batch.dtype == np.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0
