"""``polypseg predict video.mp4``: segment every frame of a video.

Frames are decoded with PyAV, go through the :class:`~polypseg.inference.Predictor` in batches, and are
written as an overlay video of the same size and frame rate (``STEM_overlay.mp4``, H.264 when PyAV's
FFmpeg has an H.264 encoder, else MPEG-4 Part 2) next to a per-frame CSV (``STEM_frames.csv``: frame,
time_s, polyp_present, polyp_area_percent, polyps). Both are written to temporary names and renamed at
the end, so an interrupted run leaves nothing half-written. Audio is not copied.

PyAV is the optional ``video`` extra (``pip install 'polypseg[video]'``); it is imported only when a
video is processed.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from polypseg.extras import require
from polypseg.files import atomic_write, atomic_write_csv, remove_stale_temporaries
from polypseg.images import InputError
from polypseg.inference.outputs import output_stems, overlay
from polypseg.inference.predictor import Predictor, validate_batch_size, validate_opacity

__all__ = [
    "VIDEO_SUFFIXES",
    "VideoSummary",
    "is_video",
    "predict_video",
    "predict_videos",
    "print_video_result",
    "split_video_inputs",
    "video_stems",
]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
FRAME_COLUMNS = ("frame", "time_s", "polyp_present", "polyp_area_percent", "polyps")
#: Encoders tried in order: H.264 (x264 or whichever H.264 encoder FFmpeg has), then MPEG-4 Part 2.
ENCODERS = ("libx264", "h264", "mpeg4")


@dataclass
class VideoSummary:
    """What :func:`predict_video` wrote."""

    source: Path
    overlay_path: Path
    csv_path: Path
    frames: int
    frames_with_polyp: int
    codec: str


def is_video(path: str | Path) -> bool:
    """True when the file name has a video suffix (:data:`VIDEO_SUFFIXES`)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def split_video_inputs(inputs: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Separate video files (and glob patterns naming videos) from the other inputs (images, folders, globs)."""
    videos: list[Path] = []
    others: list[str] = []
    for item in inputs:
        text = str(item)
        if not is_video(text):
            others.append(text)
        elif glob.has_magic(text) and not Path(text).exists():
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if matches:
                videos.extend(matches)
            else:
                others.append(text)  # reported by the image path as "pattern matches no files"
        else:
            videos.append(Path(text))
    unique: dict[str, Path] = {}
    for video in videos:  # a video given under several names (relative, absolute, x/../x) is done once
        unique.setdefault(os.path.realpath(video), video)
    return list(unique.values()), others


def _av() -> Any:
    return require("av", "video input")


def _encoder(av: Any, path: Path, width: int, height: int) -> tuple[str, str]:
    """The first available encoder and its pixel format (4:2:0 needs even sizes; x264 takes 4:4:4 otherwise)."""
    even = width % 2 == 0 and height % 2 == 0
    for name in ENCODERS:
        try:
            codec = av.codec.Codec(name, "w")
        except (ValueError, av.FFmpegError):
            continue
        if even:
            return codec.name, "yuv420p"
        if codec.name == "libx264":
            return codec.name, "yuv444p"
    raise InputError(path, f"no encoder in PyAV's FFmpeg can write a {width}x{height} video")


def _decoded(av: Any, source: Any, stream: Any, path: Path) -> Iterator[Any]:
    try:
        yield from source.decode(stream)
    except av.FFmpegError as error:
        raise InputError(path, f"cannot decode video ({_reason(error)})") from None


def _reason(error: Exception) -> str:
    """FFmpeg's words for an error, without the errno and the file name PyAV adds."""
    return " ".join(str(getattr(error, "strerror", None) or error).split())


def _batches(frames: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_video(
    predictor: Predictor,
    path: str | Path,
    out_dir: str | Path,
    stem: str | None = None,
    overwrite: bool = False,
    batch_size: int = 4,
    opacity: float = 0.4,
) -> VideoSummary:
    """Segment every frame of a video; write ``STEM_overlay.mp4`` and ``STEM_frames.csv`` into ``out_dir``.

    Args:
        predictor: The loaded model.
        path: The video.
        out_dir: Output folder (created).
        stem: Name of the outputs (default: the video's file name without suffix).
        overwrite: Replace existing outputs.
        batch_size: Frames per network call.
        opacity: Polyp tint of the overlay video.

    Raises:
        InputError: The video cannot be opened or decoded, or has no video stream (one-line message).
        FileExistsError: An output exists and ``overwrite`` is False.
        ValueError: A ``batch_size`` under 1 or an ``opacity`` outside 0-1.
    """
    batch_size, opacity = validate_batch_size(batch_size), validate_opacity(opacity)
    av = _av()
    path, out_dir = Path(path), Path(out_dir)
    stem = stem or path.stem
    overlay_path, csv_path = out_dir / f"{stem}_overlay.mp4", out_dir / f"{stem}_frames.csv"
    for output in (overlay_path, csv_path):
        if output.exists() and not overwrite:
            raise FileExistsError(f"{path}: output {output} exists; pass --overwrite")
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        source = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as error:
        raise InputError(path, f"cannot open video ({_reason(error)})") from None
    rows: list[dict[str, object]] = []
    with source:
        if not source.streams.video:
            raise InputError(path, "has no video stream")
        stream = source.streams.video[0]
        stream.thread_type = "AUTO"
        width, height = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        codec, pixel_format = _encoder(av, path, width, height)
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(overlay_path) as temporary:
            with av.open(str(temporary), mode="w", format="mp4") as target:
                encoded = target.add_stream(codec, rate=rate)
                encoded.width, encoded.height, encoded.pix_fmt = width, height, pixel_format
                for batch in _batches(_decoded(av, source, stream, path), batch_size):
                    images = [frame.to_ndarray(format="rgb24") for frame in batch]
                    for frame, image, prediction in zip(batch, images, predictor.predict_batch(images), strict=True):
                        index = len(rows)
                        time_s = frame.time if frame.time is not None else float(index / rate)
                        rows.append(
                            {
                                "frame": index,
                                "time_s": round(time_s, 6),
                                "polyp_present": int(bool(prediction.polyps)),
                                "polyp_area_percent": round(prediction.polyp_area_percent, 3),
                                "polyps": len(prediction.polyps),
                            }
                        )
                        picture = overlay(image, prediction.class_map, opacity)
                        target.mux(encoded.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
                target.mux(encoded.encode())
                if not rows:
                    raise InputError(path, "video has no frames")
    atomic_write_csv(csv_path, FRAME_COLUMNS, rows)
    present = sum(int(row["polyp_present"]) for row in rows)  # type: ignore[call-overload]
    return VideoSummary(path, overlay_path, csv_path, len(rows), present, codec)


def video_stems(videos: Sequence[Path]) -> list[str]:
    """Output names of the videos, all different: as :func:`polypseg.inference.output_stems`."""
    return output_stems(videos)


def predict_videos(
    predictor: Predictor,
    videos: Sequence[Path],
    out_dir: str | Path,
    overwrite: bool = False,
    batch_size: int = 4,
    opacity: float = 0.4,
    on_result: Callable[[Path, VideoSummary | None, str | None], None] | None = None,
) -> tuple[list[VideoSummary], list[str]]:
    """:func:`predict_video` on each video; a video that fails is reported (one line) and the others are done.

    Returns:
        The summaries of the videos done, and one-line errors.

    Raises:
        ValueError: A ``batch_size`` under 1 or an ``opacity`` outside 0-1.
    """
    batch_size, opacity = validate_batch_size(batch_size), validate_opacity(opacity)
    remove_stale_temporaries(out_dir)
    done: list[VideoSummary] = []
    errors: list[str] = []
    report = on_result or (lambda path, summary, error: None)
    for video, stem in zip(videos, video_stems(videos), strict=True):
        try:
            summary = predict_video(predictor, video, out_dir, stem, overwrite, batch_size, opacity)
        except (InputError, FileExistsError) as error:
            errors.append(str(error))
            report(video, None, str(error))
            continue
        done.append(summary)
        report(video, summary, None)
    return done, errors


def print_video_result(path: Path, summary: VideoSummary | None, error: str | None) -> None:
    """Default per-video report: one line on stdout, or the error on stderr."""
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return
    assert summary is not None
    print(
        f"{path.name}: {summary.frames} frames, polyp in {summary.frames_with_polyp}; "
        f"{summary.overlay_path.name} ({summary.codec}), {summary.csv_path.name}"
    )
