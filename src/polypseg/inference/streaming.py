"""``polypseg predict`` on files: stream them through a Predictor and write outputs and ``predictions.csv``.

:func:`predict_files` streams files through a predictor: decoding runs ahead in threads, batches go
through the network, outputs are written atomically by another thread, and memory does not grow with the
number of files.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from polypseg.files import atomic_write_csv, expand_inputs, remove_stale_temporaries
from polypseg.images import InputError, read_image
from polypseg.inference.outputs import CSV_COLUMNS, csv_row, output_stems, output_suffixes, write_outputs
from polypseg.inference.predictor import Prediction, Predictor, validate_batch_size, validate_opacity

__all__ = ["PredictionSummary", "predict_files", "print_result"]


@dataclass
class PredictionSummary:
    """What :func:`predict_files` did: rows written and one-line errors (file: problem)."""

    rows: list[dict[str, object]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every input was segmented."""
        return not self.errors


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
            summary.rows.append(csv_row(str(path), stems[path], image, prediction))
            report(path, prediction, None)

    def flush(batch: list[tuple[Path, np.ndarray]], writer: ThreadPoolExecutor) -> None:
        for (path, image), prediction in zip(batch, predictor.predict_batch([img for _, img in batch]), strict=True):
            future = writer.submit(write_outputs, out_dir, stems[path], image, prediction, opacity, overlay_format)
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

    atomic_write_csv(csv_path, CSV_COLUMNS, summary.rows)
    return summary


def print_result(path: Path, prediction: Prediction | None, error: str | None) -> None:
    """Default per-image report: one line per image on stdout, errors on stderr."""
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return
    assert prediction is not None
    count = len(prediction.polyps)
    print(f"{path.name}: polyp area {prediction.polyp_area_percent:.1f}%, {count} polyp{'s' if count != 1 else ''}")
