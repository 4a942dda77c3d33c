"""Video input: per-frame CSV and overlay video of ``polypseg predict clip.mp4``."""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from polypseg.apps.cli import main
from polypseg.inference import Predictor

pytestmark = pytest.mark.precision  # run under both POLYPSEG_NATIVE_BF16 settings by make test

WIDTH, HEIGHT, FRAMES, FPS = 80, 48, 6, 10


def synthetic_frames() -> list[np.ndarray]:
    """A bright ellipse moving across dark noise."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    frames = []
    for index in range(FRAMES):
        frame = rng.integers(0, 100, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
        frame[((rows - HEIGHT / 2) / 12) ** 2 + ((cols - 20 - 8 * index) / 15) ** 2 <= 1] += 120
        frames.append(frame)
    return frames


@pytest.fixture
def clip(tmp_path) -> Path:
    path = tmp_path / "clip.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for frame in synthetic_frames():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture
def weights(tmp_path, partial_polyp_weights) -> Path:
    """Untrained weights whose polyp class wins on about a third of the first frame (not all or nothing)."""
    return partial_polyp_weights(synthetic_frames()[0], tmp_path / "weights", 0.33)


def decode(path: Path) -> tuple[list[np.ndarray], Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)], stream.average_rate


def test_video_gives_overlay_video_and_per_frame_csv(clip, weights, tmp_path, write_image, capsys):
    out = tmp_path / "out"
    image = write_image(tmp_path / "still.png", size=(40, 30))
    # The weights are tuned in fp32 (a third of the frame): pinned, so the test does not depend on the CPU.
    args = ["predict", "--weights", str(weights), "--precision", "32", str(clip), str(image), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"clip.mp4: {FRAMES} frames" in printed and "1 videos segmented" in printed

    with (out / "clip_frames.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["frame", "time_s", "polyp_present", "polyp_area_percent", "polyps"]
    assert [int(row["frame"]) for row in rows] == list(range(FRAMES))
    assert [float(row["time_s"]) for row in rows] == pytest.approx([i / FPS for i in range(FRAMES)])

    # Lossy codec: the reference is the predictor on the frames as decoded, not on the arrays we encoded.
    decoded, _ = decode(clip)
    predictions = Predictor.from_pretrained(weights, precision="32").predict_batch(decoded)
    assert [float(row["polyp_area_percent"]) for row in rows] == [round(p.polyp_area_percent, 3) for p in predictions]
    assert [int(row["polyps"]) for row in rows] == [len(p.polyps) for p in predictions]
    assert [int(row["polyp_present"]) for row in rows] == [int(bool(p.polyps)) for p in predictions]
    assert len({row["polyp_area_percent"] for row in rows}) > 1 and 0 < float(rows[0]["polyp_area_percent"]) < 100

    overlay_frames, rate = decode(out / "clip_overlay.mp4")
    assert len(overlay_frames) == FRAMES and rate == FPS
    assert all(frame.shape == (HEIGHT, WIDTH, 3) for frame in overlay_frames)
    # The image went the usual way, into predictions.csv.
    with (out / "predictions.csv").open() as handle:
        assert [Path(row["file"]).name for row in csv.DictReader(handle)] == ["still.png"]
    assert not list(out.glob(".*"))  # no temporary files left


def test_video_outputs_are_not_overwritten_without_flag(clip, weights, tmp_path, capsys):
    args = ["predict", "--weights", str(weights), str(clip), "--out", str(tmp_path / "out")]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err and "clip.mp4" in err
    assert main([*args, "--overwrite"]) == 0


def test_unreadable_video_is_one_line_and_leaves_nothing(weights, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 50)
    out = tmp_path / "out"
    assert main(["predict", "--weights", str(weights), str(broken), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.mp4" in err and "cannot open video" in err
    assert not out.exists() or not any(out.iterdir())


def test_split_video_inputs(tmp_path):
    from polypseg.inference.video import split_video_inputs

    for name in ("a.mp4", "b.MOV", "c.jpg"):
        (tmp_path / name).touch()
    videos, others = split_video_inputs([tmp_path / "a.mp4", str(tmp_path / "*.MOV"), tmp_path / "c.jpg", "x/"])
    assert videos == [tmp_path / "a.mp4", tmp_path / "b.MOV"]
    assert others == [str(tmp_path / "c.jpg"), "x/"]
