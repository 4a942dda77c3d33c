import io as stdlib_io

import numpy as np
import pytest
from PIL import Image

from polypseg.io import InputError, atomic_write, atomic_write_bytes, atomic_write_text, read_image, read_mask


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


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_write(target) as temporary:
        assert temporary.parent == target.parent
        assert temporary != target
        temporary.write_text("hello")
    assert target.read_text() == "hello"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_atomic_write_keeps_old_file_when_block_raises(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as temporary:
            temporary.write_text("half-written")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_write_helpers(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.txt", "héllo")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo"
    atomic_write_text(tmp_path / "b.txt", "replaced")
    assert (tmp_path / "b.txt").read_text() == "replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt"]
