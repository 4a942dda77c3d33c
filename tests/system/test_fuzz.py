"""Property-based tests (hypothesis) of the image and mask readers and the class recipe.

* ``read_image`` / ``read_mask`` on arbitrary bytes and on damaged real images (truncated, bytes
  overwritten) either return a well-formed array or raise :class:`InputError`, nothing else.
* ``mask_to_classes`` / ``classes_to_mask``: the round trip is exact for every boolean mask and width
  0-5; the boundary is exactly the polyp pixels within the width (chessboard) of a background pixel
  inside the image (checked against a brute-force definition); numpy and torch agree.
* ``resize_mask`` always returns a boolean mask of the requested size.
"""

from __future__ import annotations

import io as stdlib_io
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from PIL import Image

import polypseg.images
from polypseg.classes import BOUNDARY, POLYP, classes_to_mask, mask_to_classes
from polypseg.errors import InputError
from polypseg.images import read_image, read_mask, resize_mask

FUZZ = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


def _encode(array: np.ndarray, format: str, **options: object) -> bytes:
    buffer = stdlib_io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **options)
    return buffer.getvalue()


def _seed_files() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 8
    return [
        _encode(rgb, "PNG"),
        _encode(rgb, "JPEG", quality=90),
        _encode(rgb, "JPEG", quality=90, exif=exif.tobytes()),
        _encode(rgb, "BMP"),
        _encode(rgb, "TIFF"),
        _encode(rgb, "WEBP"),
        _encode(rgb, "GIF"),
        _encode(rgb[..., 0].astype(np.uint16) * 257, "PNG"),
        _encode(np.dstack([rgb, rgb[..., :1]]), "PNG"),
        _encode(rng.random((6, 5)).astype(np.float32), "TIFF"),
    ]


SEEDS = _seed_files()


@st.composite
def damaged_images(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "input.img"


def _check_readers(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    # A small pixel limit keeps damaged headers that claim huge sizes from allocating much memory.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(polypseg.images, "MAX_IMAGE_PIXELS", 4_000_000)
        patch.setattr(Image, "MAX_IMAGE_PIXELS", 4_000_000)
        for reader, channels in ((read_image, (3,)), (read_mask, ())):
            try:
                array = reader(path)
            except InputError as error:
                assert error.path == path and "\n" not in str(error)
                continue
            assert array.dtype == np.uint8 and array.ndim == 2 + len(channels)
            assert array.shape[0] >= 1 and array.shape[1] >= 1 and array.shape[2:] == channels


@pytest.mark.filterwarnings("ignore")
@FUZZ
@given(content=st.binary(max_size=512))
def test_readers_on_arbitrary_bytes(fuzz_file, content):
    _check_readers(fuzz_file, content)


@pytest.mark.filterwarnings("ignore")
@FUZZ
@given(content=damaged_images())
def test_readers_on_damaged_images(fuzz_file, content):
    _check_readers(fuzz_file, content)


def _boundary_by_definition(mask: np.ndarray, width: int) -> np.ndarray:
    """Polyp pixels with a background pixel inside the image within chessboard distance ``width``."""
    height, columns = mask.shape
    result = np.zeros_like(mask)
    for y, x in zip(*np.nonzero(mask), strict=True):
        window = mask[max(y - width, 0) : y + width + 1, max(x - width, 0) : x + width + 1]
        result[y, x] = width > 0 and not window.all()
    return result


masks_2d = arrays(np.bool_, array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12))
masks_any = arrays(np.bool_, array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=10))


@settings(deadline=None, max_examples=200)
@given(mask=masks_2d, width=st.integers(0, 5))
def test_class_recipe_matches_its_definition(mask, width):
    classes = mask_to_classes(mask, width)
    assert classes.dtype == np.uint8 and classes.shape == mask.shape
    np.testing.assert_array_equal(classes_to_mask(classes), mask)
    boundary = classes == BOUNDARY
    assert not (boundary & ~mask).any() and not ((classes == POLYP) & ~mask).any()
    np.testing.assert_array_equal(boundary, _boundary_by_definition(mask, width))


@settings(deadline=None, max_examples=150)
@given(mask=masks_any, width=st.integers(0, 5))
def test_class_recipe_round_trip_numpy_torch_and_uint8(mask, width):
    classes = mask_to_classes(mask, width)
    np.testing.assert_array_equal(classes_to_mask(classes), mask)
    tensor_classes = mask_to_classes(torch.from_numpy(mask), width)
    assert tensor_classes.dtype == torch.uint8
    np.testing.assert_array_equal(tensor_classes.numpy(), classes)
    np.testing.assert_array_equal(mask_to_classes(mask.astype(np.uint8) * 255, width), classes)
    if mask.ndim == 3:  # a batch is the stack of its images
        for image, image_classes in zip(mask, classes, strict=True):
            np.testing.assert_array_equal(mask_to_classes(image, width), image_classes)


@settings(deadline=None, max_examples=150)
@given(
    mask=arrays(np.uint8, array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40)),
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
)
def test_resize_mask_is_binary_and_of_the_requested_size(mask, size):
    resized = resize_mask(mask, size)
    assert resized.dtype == np.bool_ and resized.shape == size
    binary = mask >= 128
    if not binary.any():
        assert not resized.any()
    if binary.all():
        assert resized.all()
    if size == mask.shape:
        np.testing.assert_array_equal(resized, binary)
