"""Prediction: load a model once, segment images at their own resolution, write masks, overlays and a CSV.

:class:`Predictor` separates "load the trained model" from "predict these images". Each image is resized
to the network's input size exactly as in training (antialiased bilinear), the logits are resized back to
the image's own size (bilinear) and the class map is their argmax there, so masks follow the original
resolution rather than a blocky upscaled 256x256 map (for the binary variant, one channel: polyp where
the sigmoid of the resized logit is at least ``threshold``; :func:`polypseg.classes.logits_to_classes`).
With ``tta=True`` the network's output is the flip test-time augmentation of
:func:`polypseg.tta.flip_tta` (four network calls per batch).

:func:`predict_files` streams files through a predictor: decoding runs ahead in threads, batches go
through the network, outputs are written atomically, and memory does not grow with the number of files.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import sys
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from polypseg.backends import Backend, TorchBackend
from polypseg.classes import BOUNDARY, DEFAULT_THRESHOLD, POLYP, classes_to_mask, logits_to_classes
from polypseg.data import resize_image
from polypseg.io import (
    IMAGE_SUFFIXES,
    InputError,
    atomic_save,
    atomic_write_text,
    read_image,
    remove_stale_temporaries,
)
from polypseg.metrics import PolypRegion, find_polyps
from polypseg.model import UNet
from polypseg.tta import flip_tta
from polypseg.weights import read_model_config

__all__ = [
    "CLASS_PALETTE",
    "OUTPUT_SUFFIXES",
    "PolypRegion",
    "Prediction",
    "PredictionSummary",
    "Predictor",
    "expand_inputs",
    "output_stems",
    "overlay",
    "predict_files",
    "output_suffixes",
    "print_result",
    "validate_batch_size",
    "validate_opacity",
    "validate_threshold",
]

#: Colours of the class-map PNG palette: background black, polyp green, boundary yellow.
CLASS_PALETTE: tuple[tuple[int, int, int], ...] = ((0, 0, 0), (0, 200, 0), (255, 220, 0))
#: Overlay file formats: JPEG (default; about 40x faster to encode than PNG), lossless PNG, or none.
OVERLAY_FORMATS = ("jpg", "png", "none")
JPEG_QUALITY = 90
CSV_COLUMNS = ("file", "width", "height", "polyp_area_percent", "polyps", "boxes", "stem")


def validate_batch_size(batch_size: object) -> int:
    """``batch_size`` if it is a whole number of at least 1, else a one-line ``ValueError``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
    return int(batch_size)


def validate_threshold(threshold: object) -> float:
    """``threshold`` if it is a number from 0 to 1, else a one-line ``ValueError``."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.number) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a number from 0 to 1, got {threshold!r}")
    return float(threshold)


def validate_opacity(opacity: object) -> float:
    """``opacity`` if it is a number from 0 to 1, else a one-line ``ValueError``."""
    if isinstance(opacity, bool) or not isinstance(opacity, int | float | np.number) or not 0 <= opacity <= 1:
        raise ValueError(f"opacity must be a number from 0 to 1, got {opacity!r}")
    return float(opacity)


@dataclass
class Prediction:
    """Segmentation of one image at its own resolution.

    Attributes:
        class_map: (H, W) uint8, 0 background, 1 polyp, 2 boundary (binary models: 0 and 1 only).
        polyps: Connected polyp regions (8-connectivity) of at least the predictor's minimum area,
            largest first.
    """

    class_map: np.ndarray
    polyps: list[PolypRegion] = field(default_factory=list)

    @property
    def polyp_mask(self) -> np.ndarray:
        """Boolean (H, W) polyp mask (classes 1 and 2)."""
        return classes_to_mask(self.class_map)

    @property
    def polyp_area_percent(self) -> float:
        """Share of the image covered by the polyp mask, in percent."""
        return 100.0 * float(self.polyp_mask.mean())


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


class Predictor:
    """A loaded model that segments images.

    Args:
        model: A U-Net (run with PyTorch) or any :class:`~polypseg.backends.Backend` (ONNX Runtime,
            OpenVINO, ...).
        image_size: Network input size (the training resolution), square.
        device: Torch device (PyTorch models only).
        precision: For a U-Net: ``"auto"`` (bf16 autocast where the CPU/GPU computes bf16 natively,
            else fp32), ``"32"`` or ``"bf16"``. A backend brings its own precision.
        min_polyp_fraction: Regions smaller than this share of the image are not counted as polyps
            (they stay in the mask). Default 0.1 %. From 0 to 1.
        tta: Flip test-time augmentation (:func:`polypseg.tta.flip_tta`): average the predictions of the
            image and its horizontal, vertical and double flips. Four times the inference time.
        threshold: Binary models (one output channel): polyp where the sigmoid probability is at least
            this, from 0 to 1. Not used by 3-class models (argmax).

    Example:
        >>> predictor = Predictor.from_pretrained()  # the bundled model
        >>> prediction = predictor.predict(np.zeros((300, 400, 3), np.uint8))
        >>> prediction.class_map.shape
        (300, 400)
    """

    def __init__(
        self,
        model: UNet | Backend,
        image_size: int = 256,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        min_polyp_fraction: float = 0.001,
        tta: bool = False,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        if (
            isinstance(min_polyp_fraction, bool)
            or not isinstance(min_polyp_fraction, int | float | np.number)
            or not 0 <= min_polyp_fraction <= 1
        ):
            raise ValueError(f"minimum polyp fraction must be a number from 0 to 1, got {min_polyp_fraction!r}")
        self.threshold = validate_threshold(threshold)
        self.backend: Backend = TorchBackend(model, precision, device) if isinstance(model, UNet) else model
        self.image_size = image_size
        self.precision = self.backend.precision
        self.min_polyp_fraction = min_polyp_fraction
        self.tta = tta

    @classmethod
    def from_pretrained(
        cls,
        weights: str | Path | None = None,
        backend: str = "torch",
        precision: str = "auto",
        tta: bool = False,
        decoder_concat: str | None = None,
        images: int | None = None,
        **kwargs: object,
    ) -> Predictor:
        """Load weights (see :func:`polypseg.load_pretrained`; ``None`` is the bundled model).

        Args:
            weights: Weights folder/file/run folder/``hf://`` reference, or an export folder.
            backend: ``"torch"``, ``"onnxruntime"``, ``"openvino"`` or ``"auto"`` (the fastest installed;
                see :func:`polypseg.export.load_backend`, which exports once and caches the result).
            precision: ``"auto"``, ``"32"``, ``"bf16"`` or (OpenVINO) ``"int8"``.
            tta: Flip test-time augmentation (see the class), with any backend.
            decoder_concat: The decoder's concatenation order, ``"skip-up"`` or ``"up-skip"``, for weights
                whose ``config.json`` does not say it (see :func:`polypseg.load_pretrained`).
            images: For ``backend="auto"``: how many images are about to be segmented (``None``: unknown
                or many), so that a first export is made only where it pays.
            **kwargs: Passed to the constructor (``min_polyp_fraction``, ``device``, ``threshold``).
        """
        from polypseg.export import load_backend

        size = read_model_config(weights).get("input_size", [256, 256])
        loaded = load_backend(weights, backend, precision, decoder_concat=decoder_concat, images=images)
        return cls(loaded, image_size=int(size[0]), tta=tta, **kwargs)  # type: ignore[arg-type]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Segment (H, W, 3) uint8 RGB images of any sizes; returns one :class:`Prediction` each."""
        if not images:
            return []
        size = (self.image_size, self.image_size)
        batch = np.stack([resize_image(image, size) for image in images])
        pixels = batch.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        # With TTA these are log-probabilities (binary: the logit of the mean probability): the class map
        # is taken the same way.
        logits = torch.from_numpy(flip_tta(self.backend, pixels) if self.tta else self.backend(pixels))
        predictions = []
        for image, image_logits in zip(images, logits, strict=True):
            height, width = image.shape[:2]
            full = F.interpolate(image_logits[None], size=(height, width), mode="bilinear", align_corners=False)
            class_map = logits_to_classes(full[0], self.threshold).numpy()
            min_pixels = int(np.ceil(self.min_polyp_fraction * height * width))
            predictions.append(Prediction(class_map, find_polyps(classes_to_mask(class_map), min_pixels)))
        return predictions

    def predict(self, image: np.ndarray) -> Prediction:
        """Segment one (H, W, 3) uint8 RGB image."""
        return self.predict_batch([image])[0]


def _is_visible_image(path: Path, folder: Path) -> bool:
    """An image file not hidden under ``folder`` (no ``.DS_Store``, ``._x.jpg`` or ``.cache/`` entries)."""
    hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
    return not hidden and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _resolved(path: Path) -> Path:
    """The absolute path without symbolic links, ``.`` or ``..``: one name per file."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symbolic-link loop
        return Path(os.path.abspath(path))


def expand_inputs(inputs: Iterable[str | Path], exclude: str | Path | None = None) -> tuple[list[Path], list[str]]:
    """Files, folders and glob patterns -> image paths, and problems.

    A folder is searched recursively for files with an image suffix; hidden files and folders (names
    starting with ".", such as macOS ``._IMG.jpg`` resource forks) are skipped. Files named explicitly
    are always used. A file given several times, under any names (relative, absolute, ``x/../x``, a
    symbolic link), is used once, under the first name given.

    Args:
        inputs: Files, folders and glob patterns.
        exclude: A folder whose files are never inputs, such as the output folder of ``predict``: when it
            lies inside an input folder it is skipped, and a file or folder given inside it is reported.

    Returns:
        The paths in a stable order (duplicates removed) and one-line messages for inputs that match nothing.
    """
    excluded = _resolved(Path(exclude)) if exclude is not None else None

    def inside_excluded(resolved: Path) -> bool:
        return excluded is not None and resolved.is_relative_to(excluded)

    found_paths: dict[Path, Path] = {}  # resolved -> as given
    problems: list[str] = []

    def add(candidates: Iterable[Path]) -> int:
        """Add the paths outside the excluded folder; return how many that were."""
        kept = 0
        for candidate in candidates:
            resolved = _resolved(candidate)
            if not inside_excluded(resolved):
                found_paths.setdefault(resolved, candidate)
                kept += 1
        return kept

    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.exists() and inside_excluded(_resolved(path)):
            problems.append(f"{path}: is the output folder or inside it; its files are not read as inputs")
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if _is_visible_image(p, path))
            if not found:
                problems.append(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            elif not add(found):
                problems.append(f"{path}: folder holds no images outside the output folder")
        elif path.exists():
            add([path])
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not add(found):
                problems.append(f"{text}: pattern matches no files" + (" outside the output folder" if found else ""))
        else:
            problems.append(f"{path}: file not found")
    return list(found_paths.values()), problems


@dataclass
class PredictionSummary:
    """What :func:`predict_files` did: rows written and one-line errors (file: problem)."""

    rows: list[dict[str, object]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every input was segmented."""
        return not self.errors


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


def _read_ahead(paths: Sequence[Path], lookahead: int) -> Iterator[tuple[Path, np.ndarray | InputError]]:
    """Decode images in two threads, at most ``lookahead`` ahead of the consumer (bounded memory)."""

    def read(path: Path) -> np.ndarray | InputError:
        try:
            return read_image(path)
        except InputError as error:
            return error

    with ThreadPoolExecutor(max_workers=2) as pool:
        pending: deque[tuple[Path, Future]] = deque()
        queue = iter(paths)
        for path in queue:
            pending.append((path, pool.submit(read, path)))
            if len(pending) >= lookahead:
                break
        while pending:
            path, future = pending.popleft()
            next_path = next(queue, None)
            if next_path is not None:
                pending.append((next_path, pool.submit(read, next_path)))
            yield path, future.result()


def output_suffixes(overlay_format: str = "jpg") -> tuple[str, ...]:
    """File name suffixes of one input's outputs (``STEM`` + suffix) for an overlay format."""
    if overlay_format not in OVERLAY_FORMATS:
        raise ValueError(f"overlay format must be one of {', '.join(OVERLAY_FORMATS)}, got {overlay_format!r}")
    return ("_classes.png", "_mask.png") + (() if overlay_format == "none" else (f"_overlay.{overlay_format}",))


#: The image outputs written per input with the default JPEG overlay.
OUTPUT_SUFFIXES = output_suffixes("jpg")


def _save_png(path: Path, image: Image.Image) -> None:
    # zlib level 1: several times faster than the default 6, and masks and class maps compress well anyway.
    atomic_save(path, lambda temporary: image.save(temporary, format="PNG", compress_level=1))


def _write_outputs(
    out_dir: Path, stem: str, image: np.ndarray, prediction: Prediction, opacity: float, overlay_format: str = "jpg"
) -> None:
    classes = Image.fromarray(prediction.class_map, mode="P")
    palette = [value for colour in CLASS_PALETTE for value in colour]
    classes.putpalette(palette + [0] * (768 - len(palette)))
    _save_png(out_dir / f"{stem}_classes.png", classes)
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


def predict_files(
    predictor: Predictor,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    overwrite: bool = False,
    batch_size: int = 4,
    opacity: float = 0.4,
    on_result: Callable[[Path, Prediction | None, str | None], None] | None = None,
    overlay_format: str = "jpg",
) -> PredictionSummary:
    """Segment files and write masks, overlays and ``predictions.csv`` into ``out_dir``.

    Per image, at its own resolution: ``STEM_classes.png`` (palette class map), ``STEM_mask.png``
    (binary polyp mask, 0/255) and ``STEM_overlay.jpg`` (or ``.png``, or none: ``overlay_format``);
    ``predictions.csv`` has one row per image, with its STEM (:func:`output_stems`: the file's stem, or
    ``STEM-N`` when stems repeat, so that no two inputs share outputs).

    A file that cannot be read or whose outputs exist (without ``overwrite``) is reported and skipped;
    the others are still done. ``predictions.csv`` is written atomically at the end. Files inside
    ``out_dir`` are never inputs (earlier outputs are not segmented again), a file given twice is done
    once, and temporary files that a killed earlier run left in ``out_dir`` are deleted first.

    Args:
        predictor: The loaded model.
        inputs: Files, folders or glob patterns.
        out_dir: Output folder (created).
        overwrite: Replace existing outputs.
        batch_size: Images per network call.
        opacity: Polyp tint strength of the overlays.
        on_result: Called after each input with ``(path, prediction, None)`` or ``(path, None, error)``.
        overlay_format: ``"jpg"`` (quality 90), ``"png"`` (lossless, slower) or ``"none"``.

    Raises:
        FileExistsError: ``out_dir/predictions.csv`` exists and ``overwrite`` is False.
        ValueError: Unknown ``overlay_format``, a ``batch_size`` under 1, an ``opacity`` outside 0-1.
    """
    suffixes = output_suffixes(overlay_format)
    batch_size = validate_batch_size(batch_size)
    opacity = validate_opacity(opacity)
    out_dir = Path(out_dir)
    csv_path = out_dir / "predictions.csv"
    if csv_path.exists() and not overwrite:
        raise FileExistsError(f"{csv_path}: exists; pass --overwrite to replace earlier predictions")
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    paths, problems = expand_inputs(inputs, exclude=out_dir)
    summary = PredictionSummary(errors=list(problems))
    report = on_result or (lambda path, prediction, error: None)
    for problem in problems:
        report(Path(problem.split(": ")[0]), None, problem)
    stems = dict(zip(paths, output_stems(paths), strict=True))

    # Image encoding runs in a writer thread (zlib releases the GIL) while the next batch is decoded and
    # segmented; at most 2 x batch_size results wait to be written, so memory stays bounded.
    pending: deque[tuple[Path, np.ndarray, Prediction, Future]] = deque()

    def finish(keep: int) -> None:
        while len(pending) > keep:
            path, image, prediction, future = pending.popleft()
            error = future.exception()
            if error is not None:
                message = f"{path}: cannot write outputs ({' '.join(str(error).split())})"
                summary.errors.append(message)
                report(path, None, message)
                continue
            summary.rows.append(
                {
                    "file": str(path),
                    "width": image.shape[1],
                    "height": image.shape[0],
                    "polyp_area_percent": round(prediction.polyp_area_percent, 3),
                    "polyps": len(prediction.polyps),
                    "boxes": json.dumps([list(region.box) for region in prediction.polyps]),
                    "stem": stems[path],
                }
            )
            report(path, prediction, None)

    def flush(batch: list[tuple[Path, np.ndarray]], writer: ThreadPoolExecutor) -> None:
        for (path, image), prediction in zip(batch, predictor.predict_batch([img for _, img in batch]), strict=True):
            future = writer.submit(_write_outputs, out_dir, stems[path], image, prediction, opacity, overlay_format)
            pending.append((path, image, prediction, future))
            finish(keep=2 * batch_size)
        batch.clear()

    batch: list[tuple[Path, np.ndarray]] = []
    with ThreadPoolExecutor(max_workers=1) as writer:
        for path, result in _read_ahead(paths, lookahead=2 * batch_size):
            if isinstance(result, InputError):
                summary.errors.append(str(result))
                report(path, None, str(result))
                continue
            existing = [out_dir / f"{stems[path]}{suffix}" for suffix in suffixes]
            if not overwrite and any(p.exists() for p in existing):
                message = f"{path}: output {next(p for p in existing if p.exists())} exists; pass --overwrite"
                summary.errors.append(message)
                report(path, None, message)
                continue
            batch.append((path, result))
            if len(batch) >= batch_size:
                flush(batch, writer)
        flush(batch, writer)
        finish(keep=0)

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(summary.rows)
    atomic_write_text(csv_path, buffer.getvalue())
    return summary


def print_result(path: Path, prediction: Prediction | None, error: str | None) -> None:
    """Default per-image report: one line per image on stdout, errors on stderr."""
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return
    assert prediction is not None
    count = len(prediction.polyps)
    print(f"{path.name}: polyp area {prediction.polyp_area_percent:.1f}%, {count} polyp{'s' if count != 1 else ''}")
