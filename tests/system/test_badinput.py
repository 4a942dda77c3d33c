"""A corpus of messy and hostile inputs, generated here, and the defined behaviour for each.

Every file is either handled correctly (EXIF orientation respected, alpha dropped, grayscale expanded,
...) or refused with a one-line :class:`InputError` naming it. ``predict`` goes on with the other files
and exits 1; ``train`` refuses before it writes anything. Weights are only read from safetensors,
``config.json`` is validated, and output names cannot leave ``--out``.

Cases already covered elsewhere are not repeated: 16-bit PNG, palette, RGBA and grayscale pixel values
(tests/test_io.py), a missing mask and an unreadable training image (tests/test_cli.py).
"""

from __future__ import annotations

import csv
import io as stdlib_io
import json
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polypseg.apps.cli import main
from polypseg.classes import mask_to_classes
from polypseg.data import DatasetError, find_pairs, load_pairs
from polypseg.errors import InputError
from polypseg.images import read_image, read_mask
from polypseg.inference import Predictor, expand_inputs, predict_files
from polypseg.weights import WeightsError, load_pretrained, read_model_config, save_pretrained


def _rgb(height: int = 20, width: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _jpeg_bytes(array: np.ndarray, **options: object) -> bytes:
    buffer = stdlib_io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=95, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` RGB pixels but holds almost no data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def write_corpus(folder: Path) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Write the bad-input corpus into ``folder``.

    Returns:
        The readable files with their (height, width) after EXIF orientation, and the names of the
        files that must be refused. Stray files (``.DS_Store``, ``Thumbs.db``, ``notes.txt``, hidden
        files and folders) are written too; they are neither.
    """
    folder.mkdir(parents=True, exist_ok=True)
    good: dict[str, tuple[int, int]] = {}
    rgb = _rgb()
    Image.fromarray(rgb[..., 0], mode="L").save(folder / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((20, 30), 90, np.uint8)]), mode="RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(folder / "palette.png")
    Image.fromarray(rgb).convert("LA").save(folder / "gray_alpha.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(folder / "deep16.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    (folder / "exif_rotated.jpg").write_bytes(_jpeg_bytes(rgb, exif=exif.tobytes()))
    Image.fromarray(rgb[:1, :1]).save(folder / "one_pixel.png")
    Image.fromarray(rgb[:1, :]).save(folder / "one_row.png")
    (folder / "sub dir ünï").mkdir()
    Image.fromarray(rgb).save(folder / "sub dir ünï" / "pólip 1 ✓.jpg", quality=95)
    for name in ("gray.png", "rgba.png", "palette.png", "gray_alpha.png", "deep16.png", "cmyk.jpg"):
        good[name] = (20, 30)
    good.update({"exif_rotated.jpg": (30, 20), "one_pixel.png": (1, 1), "one_row.png": (1, 30)})
    good["sub dir ünï/pólip 1 ✓.jpg"] = (20, 30)

    bad = {
        "empty.jpg": b"",
        "truncated.jpg": _jpeg_bytes(_rgb(64, 64))[:700],
        "text.jpg": b"this is a text file\nnamed like a JPEG\n",
        "bomb.png": png_header_only(50_000, 50_000),  # 2.5 G pixels: Pillow's own error
        "bomb_warning_range.png": png_header_only(12_000, 12_000),  # 144 M: Pillow only warns; we refuse
        "header_only.png": png_header_only(40, 30),  # valid header, no pixel data
    }
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    (folder / "dir.jpg").mkdir()  # a folder with an image suffix

    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (folder / "notes.txt").write_text("not an image")
    (folder / "._gray.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    (folder / ".cache").mkdir()
    (folder / ".cache" / "thumb.jpg").write_bytes(b"broken")
    return good, sorted(bad)


# --------------------------------------------------------------------------------------------------
# The readers


def test_corpus_readable_files_are_read_at_their_display_size(tmp_path):
    good, _ = write_corpus(tmp_path / "corpus")
    for name, shape in good.items():
        image = read_image(tmp_path / "corpus" / name)
        assert image.shape == (*shape, 3), name
        assert image.dtype == np.uint8, name
        assert read_mask(tmp_path / "corpus" / name).shape == shape, name


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_corpus_bad_files_raise_one_line_input_error(tmp_path):
    _, bad = write_corpus(tmp_path / "corpus")
    for name in [*bad, "dir.jpg", "missing.jpg"]:
        for reader in (read_image, read_mask):
            with pytest.raises(InputError) as caught:
                reader(tmp_path / "corpus" / name)
            message = str(caught.value)
            assert name in message and "\n" not in message, message
            assert caught.value.path == tmp_path / "corpus" / name


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    """Above the limit an image is refused from its header: both above 2x (Pillow's error) and 1x-2x
    (where Pillow itself only warns)."""
    for name, (width, height) in {"over_2x.png": (50_000, 50_000), "between.png": (12_000, 12_000)}.items():
        (tmp_path / name).write_bytes(png_header_only(width, height))
        with pytest.raises(InputError, match="larger than 100,000,000 pixels"):
            read_image(tmp_path / name)


def test_exif_orientation_moves_the_content(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:6, :6] = (255, 0, 0)  # red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: top-left goes to top-right
    (tmp_path / "rotated.jpg").write_bytes(_jpeg_bytes(rgb, exif=exif.tobytes()))
    image = read_image(tmp_path / "rotated.jpg")
    assert image.shape == (30, 20, 3)
    assert image[:4, -4:, 0].mean() > 200 and image[:4, :4, 0].mean() < 50


def test_alpha_dropped_and_grayscale_expanded(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb[..., 0]).convert("LA").save(tmp_path / "la.png")
    image = read_image(tmp_path / "la.png")
    assert (image[..., 0] == rgb[..., 0]).all() and (image[..., 1] == image[..., 2]).all()
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert np.abs(read_image(tmp_path / "cmyk.jpg").astype(int) - rgb).mean() < 8


def test_error_message_stays_one_line_for_a_newline_in_the_name(tmp_path):
    path = tmp_path / "two\nlines.jpg"
    path.write_bytes(b"not a jpeg")
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert "\n" not in str(caught.value) and "lines.jpg" in str(caught.value)


def test_one_pixel_image_through_the_predictor(tiny_unet):
    predictor = Predictor(tiny_unet, image_size=64, precision="32")
    for shape in ((1, 1, 3), (1, 37, 3), (300, 2, 3)):
        prediction = predictor.predict(np.full(shape, 120, np.uint8))
        assert prediction.class_map.shape == shape[:2]
        assert set(np.unique(prediction.class_map)) <= {0, 1, 2}


# --------------------------------------------------------------------------------------------------
# predict: goes on with the rest, exits 1, ignores stray files, keeps outputs inside --out


@pytest.fixture
def tiny_weights(tiny_unet, tmp_path):
    return save_pretrained(tiny_unet, tmp_path / "weights", metadata={"input_size": [64, 64]})


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_predict_over_the_corpus(tiny_weights, tmp_path, capsys):
    good, bad = write_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    code = main(["predict", "--weights", str(tiny_weights), str(tmp_path / "corpus"), "--out", str(out)])
    assert code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    # One line per bad file, naming it; stray and hidden files are not even tried.
    assert sorted(Path(line.split(": ")[1]).name for line in errors) == bad
    with (out / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        rows = {Path(row["file"]).relative_to(tmp_path / "corpus").as_posix(): row for row in csv.DictReader(handle)}
    assert sorted(rows) == sorted(good)
    for name, (height, width) in good.items():
        assert (int(rows[name]["height"]), int(rows[name]["width"])) == (height, width)
        with Image.open(out / f"{Path(name).stem}_mask.png") as mask:
            assert mask.size == (width, height)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_expand_inputs_skips_stray_and_hidden_files(tmp_path):
    good, bad = write_corpus(tmp_path / "corpus")
    paths, problems = expand_inputs([tmp_path / "corpus"])
    names = sorted(p.relative_to(tmp_path / "corpus").as_posix() for p in paths)
    assert names == sorted([*good, *bad]) and not problems
    # A hidden file named explicitly is still used.
    assert expand_inputs([tmp_path / "corpus" / "._gray.png"])[0] == [tmp_path / "corpus" / "._gray.png"]


def test_output_names_cannot_leave_the_output_folder(tiny_unet, tmp_path):
    """Output names are the input's file name stem plus a suffix: never a path, never '..' alone."""
    inputs = tmp_path / "in" / "deeper"
    inputs.mkdir(parents=True)
    for name in ("...jpg", "..jpg", ". .jpg", "x.jpg"):
        Image.fromarray(_rgb(16, 16)).save(inputs / name, format="JPEG")
    out = tmp_path / "out"
    predictor = Predictor(tiny_unet, image_size=64, precision="32")
    sources = [
        inputs / "...jpg",
        inputs / "..jpg",
        inputs / ". .jpg",
        str(inputs / ".." / "deeper" / "x.jpg"),  # '..' in the input path
        str((inputs / "x.jpg").resolve()),  # absolute path
    ]
    summary = predict_files(predictor, sources, out)
    assert summary.ok, summary.errors
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(tmp_path / "in")]
    assert written and all(p.parent == out for p in written), written
    # x.jpg, given twice under different paths, is one file: segmented once, into x_*.
    names = sorted(p.name for p in out.glob("*_mask.png"))
    assert names == sorted([". _mask.png", "._mask.png", ".._mask.png", "x_mask.png"])
    assert len(summary.rows) == 4


# --------------------------------------------------------------------------------------------------
# train: refuses bad datasets before anything is written; tolerates stray files and empty masks


def _train_args(data: Path, run: Path) -> list[str]:
    return ["train", "--data", str(data), "--out", str(run), "--base-channels", "4", "--split-sizes", "4,1,1"]


@pytest.mark.parametrize(
    "damage, named",
    [
        ("mask_size", "sample_003.png"),
        ("truncated_image", "sample_001.jpg"),
        ("text_mask", "sample_002.png"),
        ("duplicate_stem", "sample_004.png"),
    ],
)
def test_train_refuses_a_bad_dataset_before_writing_anything(synthetic_dataset, tmp_path, capsys, damage, named):
    data = synthetic_dataset(sizes=[(64, 64)] * 6, mask_suffix=".png")
    if damage == "mask_size":
        Image.fromarray(np.zeros((40, 64), np.uint8)).save(data / "masks" / named)
    elif damage == "truncated_image":
        path = data / "images" / named
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "text_mask":
        (data / "masks" / named).write_text("not a mask")
    else:
        Image.fromarray(_rgb(64, 64)).save(data / "images" / named)  # next to sample_004.jpg
    run = tmp_path / "run"
    assert main(_train_args(data, run)) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and len(err.splitlines()) == 1, err
    assert not run.exists()


def test_training_data_tolerates_stray_files_and_empty_masks(synthetic_dataset):
    data = synthetic_dataset(sizes=[(64, 64)] * 3, mask_suffix=".png")
    for folder in (data / "images", data / "masks"):
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
        (folder / "notes.txt").write_text("annotator notes")
        (folder / "._sample_000.jpg").write_bytes(b"AppleDouble")
        (folder / "subfolder").mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(data / "masks" / "sample_001.png")  # no polyp
    samples = find_pairs(data)
    assert [s.name for s in samples] == ["sample_000", "sample_001", "sample_002"]
    pairs = load_pairs(samples, image_size=64)
    assert pairs.masks[1].sum() == 0 and pairs.masks[0].sum() > 0
    assert (mask_to_classes(pairs.masks[1].bool()) == 0).all()


def test_unicode_and_spaces_in_dataset_paths(synthetic_dataset, tmp_path):
    data = synthetic_dataset(sizes=[(64, 64)] * 2, mask_suffix=".png", name="dätä sét ✓")
    for folder in ("images", "masks"):
        for path in (data / folder).iterdir():
            path.rename(path.with_name(f"pólip {path.name}"))
    pairs = load_pairs(find_pairs(data), image_size=64)
    assert pairs.names == ["pólip sample_000", "pólip sample_001"]


def test_mask_of_another_size_names_the_mask(synthetic_dataset):
    data = synthetic_dataset(sizes=[(64, 64)] * 2, mask_suffix=".png")
    Image.fromarray(np.zeros((64, 32), np.uint8)).save(data / "masks" / "sample_001.png")
    with pytest.raises(DatasetError, match=r"sample_001.png: mask is 32x64 but its image is 64x64"):
        load_pairs(find_pairs(data), image_size=64)


# --------------------------------------------------------------------------------------------------
# Untrusted weights and config.json


class _Exploit:
    """Unpickling this would create a file: it must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "model.safetensors"])
def test_pickles_are_refused_and_never_unpickled(tiny_unet, tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    torch.save({"state_dict": tiny_unet.state_dict(), "payload": _Exploit(marker)}, path)
    with pytest.raises(WeightsError, match="not a readable safetensors file") as caught:
        load_pretrained(path)
    assert name in str(caught.value) and "\n" not in str(caught.value)
    path.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(WeightsError):
        load_pretrained(path)
    assert not marker.exists()


def test_a_lightning_checkpoint_is_not_accepted_as_weights(tmp_path):
    from polypseg.training import load_checkpoint

    marker = tmp_path / "pwned"
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "payload": _Exploit(marker)}, path)
    with pytest.raises(WeightsError):
        load_pretrained(path)
    # Resume reads Lightning checkpoints with weights_only=True: no code runs even for a hostile one.
    with pytest.raises(ValueError, match="last.ckpt"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, match",
    [
        (b'{"base_channels": "16"}', "'base_channels' must be an integer from 2 to 256"),
        (b'{"base_channels": true}', "'base_channels' must be an integer"),
        (b'{"num_classes": -3}', "'num_classes' must be an integer from 1"),
        # Hostile sizes: bounded before anything is built or computed (a huge boundary width spun for minutes).
        (b'{"boundary_width_px": 1000000000}', "'boundary_width_px' must be an integer from 0 to 64"),
        (b'{"base_channels": 400}', "'base_channels' must be an integer from 2 to 256"),
        (b'{"base_channels": 7}', "'base_channels' must be even"),
        (b'{"head_kernel_size": 4}', "'head_kernel_size' must be odd"),
        (b'{"head_kernel_size": 99}', "'head_kernel_size' must be an integer from 1 to 7"),
        (b'{"input_size": [4096, 4096]}', "'input_size' must be .* from 16 to 2048"),
        (b'{"input_size": [65536, 65536]}', "'input_size' must be"),
        (b'{"input_size": [250, 256]}', "'input_size' must be"),
        (b'{"input_size": "256"}', "'input_size' must be"),
        (b'{"boundary_width_px": -1}', "'boundary_width_px' must be"),
        (b"[1, 2, 3]", "must hold a JSON object"),
        (b"{not json", "not valid JSON"),
        (b'{"a": "\xff\xfe"}', "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    ],
)
def test_config_json_is_validated_with_clear_errors(tiny_unet, tmp_path, content, match):
    folder = save_pretrained(tiny_unet, tmp_path / "weights")
    (folder / "config.json").write_bytes(content)
    with pytest.raises(WeightsError, match=match) as caught:
        read_model_config(folder)
    assert "config.json" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(WeightsError):
        load_pretrained(folder)


def test_cli_reports_bad_weights_in_one_line(tiny_unet, tmp_path, capsys, write_image):
    folder = save_pretrained(tiny_unet, tmp_path / "weights")
    (folder / "config.json").write_text(json.dumps({"input_size": [0, 0]}))
    image = write_image(tmp_path / "x.jpg")
    assert main(["predict", "--weights", str(folder), str(image), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "config.json" in err and len(err.splitlines()) == 1


def test_evaluate_with_a_huge_boundary_width_fails_at_once(tiny_unet, synthetic_dataset, tmp_path, capsys):
    """A boundary width of 10**9 px in config.json once spun in max_pool2d for more than ten minutes."""
    folder = save_pretrained(tiny_unet, tmp_path / "weights", metadata={"input_size": [64, 64]})
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "boundary_width_px": 1_000_000_000}))
    data = synthetic_dataset()
    assert main(["evaluate", "--weights", str(folder), "--data", str(data), "--split", "all"]) == 2
    err = capsys.readouterr().err.strip()
    assert "config.json" in err and "boundary_width_px" in err and len(err.splitlines()) == 1, err


def test_tensor_shapes_are_checked_before_the_model_is_built(tiny_unet, tmp_path, monkeypatch):
    """config.json says width 256 (a 2 GB model) next to width-8 tensors: refused from the file's header."""
    from polypseg.weights import format as weights_module

    folder = save_pretrained(tiny_unet, tmp_path / "weights")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "base_channels": 256}))
    built: list[tuple[int, str]] = []
    real_unet = weights_module.UNet

    def recording_unet(*args, **kwargs):  # type: ignore[no-untyped-def]
        model = real_unet(*args, **kwargs)
        built.append((model.base_channels, next(model.parameters()).device.type))
        return model

    monkeypatch.setattr(weights_module, "UNet", recording_unet)
    with pytest.raises(WeightsError, match=r"tensor '.*' has shape .*config\.json needs") as caught:
        load_pretrained(folder)
    assert "model.safetensors" in str(caught.value) and "\n" not in str(caught.value)
    assert all(device == "meta" for _, device in built), built  # nothing real of width 256 was allocated


def test_card_of_missing_weights_fails_in_one_line(tmp_path, capsys):
    missing = tmp_path / "nonexistent" / "x.safetensors"
    assert main(["card", "--weights", str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert str(missing) in err and "not found" in err and len(err.splitlines()) == 1, err
    (tmp_path / "empty").mkdir()
    assert main(["card", "--weights", str(tmp_path / "empty")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("recorded", [{"config": {"split_sizes": ["a", 1, 2]}}, {"config": {"seed": "x"}}, [1, 2]])
def test_evaluate_names_config_json_with_bad_recorded_split(tiny_unet, synthetic_dataset, tmp_path, capsys, recorded):
    folder = save_pretrained(tiny_unet, tmp_path / "weights", metadata={"input_size": [64, 64]})
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "training": recorded}))
    data = synthetic_dataset()
    assert main(["evaluate", "--weights", str(folder), "--data", str(data), "--split", "test"]) == 2
    err = capsys.readouterr().err.strip()
    assert "config.json" in err and len(err.splitlines()) == 1, err
