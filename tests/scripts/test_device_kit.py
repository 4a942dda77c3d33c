"""The GPU kit (scripts/device): data preparation here, and the GPU script as a tiny CPU smoke run."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import REPO_ROOT
from polypseg.data import find_pairs, load_pairs, load_splits, make_splits

KIT_DIR = REPO_ROOT / "scripts" / "device"


def _kit():
    spec = importlib.util.spec_from_file_location("device_kit", KIT_DIR / "kit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def kit():
    return _kit()


SIZES = [(70, 50), (64, 64), (48, 80), (300, 200), (256, 256), (90, 60)] * 2  # 12 pairs


def _boxes(root: Path) -> None:
    """A Kvasir-style bounding-box file for every image of ``root``."""
    entries = {}
    for sample in find_pairs(root):
        with Image.open(sample.image_path) as image:
            width, height = image.size
        entries[sample.name] = {
            "height": height,
            "width": width,
            "bbox": [{"xmin": 1, "ymin": 1, "xmax": width // 2, "ymax": height // 2}],
        }
    (root / "kavsir_bboxes.json").write_text(json.dumps(entries))


def test_prepare_resizes_as_the_loader_does(kit, synthetic_dataset, tmp_path):
    source = synthetic_dataset(sizes=SIZES, mask_suffix=".jpg")
    _boxes(source)
    report = kit.prepare(source, tmp_path / "dd", size=256, split_sizes="8,2,2", seed=42, workers=1, check=0)
    assert report["check"]["masks_equal"] and report["check"]["images"] == len(SIZES)

    original, resized = find_pairs(source), find_pairs(tmp_path / "dd" / "kvasir-256")
    assert [s.name for s in resized] == [s.name for s in original]
    assert {s.image_path.suffix for s in resized} == {".jpg"} and {s.mask_path.suffix for s in resized} == {".png"}
    a, b = load_pairs(original, 256, workers=1), load_pairs(resized, 256, workers=1)
    assert torch.equal(a.masks, b.masks)  # masks exactly
    error = (a.images.int() - b.images.int()).abs()
    assert error.float().mean() < 3.0 and error.max() < 64  # images within JPEG (quality 95) error

    # the split is the seeded one train makes; the test folder holds the test split's original files
    splits = load_splits(tmp_path / "dd" / "splits.json")
    assert splits == make_splits([s.name for s in original], [8, 2, 2], 42)
    test_dir = tmp_path / "dd" / "kvasir-test"
    test_pairs = find_pairs(test_dir)
    assert [s.name for s in test_pairs] == splits["test"]
    for sample in test_pairs:
        assert sample.image_path.read_bytes() == (source / "images" / sample.image_path.name).read_bytes()
        assert sample.mask_path.read_bytes() == (source / "masks" / sample.mask_path.name).read_bytes()
    assert (test_dir / "kavsir_bboxes.json").read_bytes() == (source / "kavsir_bboxes.json").read_bytes()


def test_trim_splits_matches_max_images(kit, synthetic_dataset, tmp_path):
    source = synthetic_dataset(sizes=[(64, 64)] * 10, mask_suffix=".png")
    splits = make_splits([s.name for s in find_pairs(source)], [6, 2, 2], 42)
    (tmp_path / "s.json").write_text(json.dumps(splits))
    counts = kit.trim_splits(tmp_path / "s.json", source, 5, tmp_path / "t.json")
    trimmed = load_splits(tmp_path / "t.json")
    first = {f"sample_{i:03d}" for i in range(5)}
    for key in ("train", "val", "test"):
        assert trimmed[key] == [n for n in splits[key] if n in first] and counts[key] == len(trimmed[key])


def test_split_file_rejoins(kit, tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 2500, dtype=np.uint8).tobytes()
    (tmp_path / "w.bin").write_bytes(data)
    (tmp_path / "parts").mkdir()
    parts = kit.split_file(tmp_path / "w.bin", tmp_path / "parts", 1000)
    assert [p.name for p in parts] == ["w.bin.part00", "w.bin.part01", "w.bin.part02"]
    assert b"".join(p.read_bytes() for p in sorted((tmp_path / "parts").glob("w.bin.part*"))) == data


def test_log_tail_keeps_the_last_redraw_of_each_bar(kit, tmp_path):
    log = tmp_path / "x.log"
    log.write_text(
        "start\nEpoch 0:  50%|#  | 1/2 [00:01<00:01, 1.0it/s, loss=1]\rEpoch 0: 100%|##| 2/2 [00:02<00:00, 1.0it/s]\n"
        "Epoch 1:  50%|#  | 1/2 [00:01<00:01, 1.0it/s]\rEpoch 1: 100%|##| 2/2 [00:02<00:00, 1.0s/it, loss=2]\n"
        "best 0.5\n"
    )
    lines = kit._tail(log, 10).decode().splitlines()
    assert lines == ["start", lines[1], lines[2], "best 0.5"]
    assert lines[1].startswith("Epoch 0: 100%") and lines[2].startswith("Epoch 1: 100%")


def test_log_tail_of_an_empty_log(kit, tmp_path):
    """A job that has printed nothing yet (a busy machine): an empty tail, not an error."""
    log = tmp_path / "empty.log"
    log.write_text("")
    assert kit._tail(log, 10) == b"\n"
    log.write_text("only line\n")
    assert kit._tail(log, 10) == b"only line\n"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout")
def test_run_gpu_script_on_cpu(kit, synthetic_dataset, tmp_path):
    """run_gpu.sh end to end on CPU: width 8, one epoch each, against data laid out as prepare.sh does."""
    source = synthetic_dataset(sizes=SIZES, mask_suffix=".jpg")
    _boxes(source)
    device_data = tmp_path / "device-data"
    kit.prepare(source, device_data, size=256, split_sizes="8,2,2", seed=42, workers=1, check=0)
    out, runs = tmp_path / "out", tmp_path / "runs"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(out),
        "RUNS": str(runs),
        "DEVICE_DATA": str(device_data),
        "WHEELS": "",
        "ACCELERATOR": "cpu",
        "PRECISION": "32",
        "WIDTH": "8",
        "EPOCHS_SEED": "1",
        "EPOCHS_IMPROVED": "1",
        "BATCH_SIZE": "4",
        "OMP_NUM_THREADS": "1",
        "TRAIN_SECONDS": "240",
    }
    result = subprocess.run(["bash", str(KIT_DIR / "run_gpu.sh")], env=env, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    returned = sorted(p.name for p in out.iterdir())
    assert returned == [
        "SUMMARY.md",
        "improved-fp16-model.safetensors.part00",
        "results.tar.gz",
        "summary.json",
    ]
    summary = json.loads((out / "summary.json").read_text())
    for run in summary["runs"]:
        assert run["status"] == "complete" and run["epochs_done"] == run["epochs_planned"] == 1
        assert 0.0 <= run["test"]["mean_dice"] <= 1.0
    with tarfile.open(out / "results.tar.gz") as tar:
        members = set(tar.getnames())
        for name in ("seed", "improved"):
            for rel in ("config.yaml", "metrics.csv", "eval/metrics.json", "eval/per_image.csv", "best/config.json"):
                assert f"runs/{name}/{rel}" in members
            assert f"runs/{name}/{name}.train.log" in members and f"runs/{name}/{name}.status" in members
        metrics = json.loads(tar.extractfile("runs/seed/eval/metrics.json").read())
        assert metrics["images"] == 2 and metrics["split"] == "test"
        per_image = tar.extractfile("runs/improved/eval/per_image.csv").read().decode().splitlines()
        assert len(per_image) == 3  # header and the 2 test images
        tar.extract("runs/improved/best/config.json", tmp_path / "unpacked", filter="data")

    # the float16 weights re-join into a weights folder polypseg loads, equal to best/ within float16
    from polypseg.weights import load_pretrained

    folder = tmp_path / "unpacked" / "runs" / "improved" / "best"
    (folder / "model.safetensors").write_bytes(
        b"".join(p.read_bytes() for p in sorted(out.glob("improved-fp16-model.safetensors.part*")))
    )
    half, full = load_pretrained(folder), load_pretrained(runs / "improved")
    for (key, a), b in zip(half.state_dict().items(), full.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4), key

    # a second invocation resumes the finished runs (nothing to train) and evaluates again
    env["EPOCHS_SEED"] = ""
    again = subprocess.run(
        ["bash", str(KIT_DIR / "run_gpu.sh")],
        env={**env, "RUNS_TO_TRAIN": "seed", "RETURN_WEIGHTS": "none", "OUT": str(tmp_path / "out2")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "--resume" in again.stdout
    assert json.loads((tmp_path / "out2" / "summary.json").read_text())["runs"][0]["epochs_done"] == 1
