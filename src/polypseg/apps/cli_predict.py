"""``polypseg predict`` and ``polypseg demo``: segment images and videos."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from polypseg.apps.cli_options import (
    TTA_HELP,
    WEIGHTS_HELP,
    add_weights_options,
    number_between,
    options_from,
    positive_int,
)
from polypseg.apps.webdemo import DEFAULT_HOST, DEFAULT_MAX_MEGAPIXELS, DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT, serve
from polypseg.files import expand_inputs
from polypseg.inference import Predictor, predict_files, print_result
from polypseg.inference.video import predict_videos, print_video_result, split_video_inputs
from polypseg.weights import bundled_examples_dir

__all__ = ["PredictOptions", "add_subcommands"]


@dataclass
class PredictOptions:
    """What ``predict`` (and ``demo``, which uses its defaults) does; the CLI's defaults are these."""

    out: Path = Path("predictions")
    overwrite: bool = False
    batch_size: int = 4
    backend: str = "torch"
    precision: str = "auto"
    opacity: float = 0.4
    overlay: str = "jpg"
    min_polyp_area: float = 0.1  # percent of the image
    tta: bool = False
    decoder_concat: str | None = None  # None: what config.json records, else skip-up
    threshold: float | None = None  # binary weights: polyp where the sigmoid is >= this; None: the weights' own


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``predict`` and ``demo`` to the ``polypseg`` command."""
    _add_predict(subparsers)
    _add_demo(subparsers)


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("predict", help="segment images (masks, overlays, predictions.csv) and videos")
    parser.add_argument("inputs", nargs="+", help="image files, folders or glob patterns; video files (.mp4 ...)")
    parser.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    defaults = PredictOptions()
    parser.add_argument("--out", type=Path, default=defaults.out, help="output folder (default: predictions)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument(
        "--batch-size", type=positive_int, default=defaults.batch_size, help="images per network call (default 4)"
    )
    parser.add_argument(
        "--backend",
        default=defaults.backend,
        choices=["auto", "torch", "onnxruntime", "openvino"],
        help="inference runtime (default torch; auto: the fastest for this CPU and these weights, exported once "
        "and cached; it says on stderr what it chose and why)",
    )
    parser.add_argument(
        "--precision",
        default=defaults.precision,
        choices=["auto", "32", "bf16", "int8"],
        help="int8: OpenVINO exports only",
    )
    parser.add_argument(
        "--opacity",
        type=number_between(0, 1),
        default=defaults.opacity,
        help="polyp tint of the overlays, 0-1 (default 0.4)",
    )
    parser.add_argument(
        "--overlay",
        default=defaults.overlay,
        choices=["jpg", "png", "none"],
        help="overlay images as JPEG (default, fast), lossless PNG, or none",
    )
    parser.add_argument(
        "--min-polyp-area",
        type=number_between(0, 100),
        default=defaults.min_polyp_area,
        help="regions under this %% of the image are not counted as polyps (default 0.1)",
    )
    parser.add_argument("--tta", action="store_true", help=TTA_HELP)
    add_weights_options(parser)
    parser.set_defaults(handler=_predict)


def _run_predict(weights: str | None, inputs: Sequence[str], options: PredictOptions) -> int:
    """Segment images and videos with ``options``; print one line per input and a summary; the exit code."""
    start = time.perf_counter()
    videos, inputs = split_video_inputs(inputs)
    # How many images auto's first-export decision is for (a video: many frames, so unknown here).
    count = None if videos or options.backend != "auto" else len(expand_inputs(inputs, exclude=options.out)[0])
    predictor = Predictor.from_pretrained(
        weights,
        backend=options.backend,
        precision=options.precision,
        tta=options.tta,
        min_polyp_fraction=options.min_polyp_area / 100.0,
        images=count,
        decoder_concat=options.decoder_concat,
        threshold=options.threshold,
    )
    export_seconds = _report_backend(predictor.backend)
    ok = True
    if inputs or not videos:
        summary = predict_files(
            predictor,
            inputs,
            options.out,
            overwrite=options.overwrite,
            batch_size=options.batch_size,
            opacity=options.opacity,
            on_result=print_result,
            overlay_format=options.overlay,
        )
        print(
            f"{len(summary.rows)} images segmented into {options.out}/ (predictions.csv)"
            + (f"; {len(summary.errors)} failed" if summary.errors else "")
            + _throughput(len(summary.rows), time.perf_counter() - start, export_seconds)
        )
        ok = summary.ok
    if videos:
        done, errors = predict_videos(
            predictor,
            videos,
            options.out,
            overwrite=options.overwrite,
            batch_size=options.batch_size,
            opacity=options.opacity,
            on_result=print_video_result,
        )
        print(f"{len(done)} videos segmented into {options.out}/" + (f"; {len(errors)} failed" if errors else ""))
        ok = ok and not errors
    return 0 if ok else 1


def _report_backend(backend: object) -> float:
    """Print on stderr the export made for ``backend`` (if one was made now) and ``auto``'s choice.

    Returns:
        The seconds the export took (0 where an earlier export was reused or none was needed).
    """
    made = getattr(backend, "export", None)
    seconds = made.seconds if made is not None and made.seconds is not None else 0.0
    if seconds:
        print(made, file=sys.stderr)
    choice = getattr(backend, "auto_choice", None)
    if choice is not None:
        print(f"backend auto: {choice}", file=sys.stderr)
    return seconds


def _throughput(images: int, seconds: float, export_seconds: float) -> str:
    """`` in 3.1 s, 6.5 images/s`` (model loading included), and the rate without a first export's time."""
    if not images:
        return ""
    text = f" in {seconds:.1f} s, {images / seconds:.2f} images/s"
    if export_seconds and seconds > export_seconds:
        rest = seconds - export_seconds
        text += f" ({images / rest:.2f} images/s in {rest:.1f} s without the {export_seconds:.1f} s first export)"
    return text


def _predict(args: argparse.Namespace) -> int:
    return _run_predict(args.weights, args.inputs, options_from(PredictOptions, args))


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="segment the bundled example images with the bundled model")
    parser.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default: demo-output)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--tta", action="store_true", help=TTA_HELP + "; with --web: the page's TTA default")
    parser.add_argument("--web", action="store_true", help="serve a web page instead (needs polypseg[demo])")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"--web: interface to listen on (default: {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"--web: port (default: {DEFAULT_PORT})")
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"--web: largest upload per file, in MB (default: {DEFAULT_MAX_UPLOAD_MB:g})",
    )
    parser.add_argument(
        "--max-megapixels",
        type=float,
        default=DEFAULT_MAX_MEGAPIXELS,
        help=f"--web: largest image segmented, in MP (default: {DEFAULT_MAX_MEGAPIXELS:g})",
    )
    add_weights_options(parser)
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    if args.web:
        serve(
            args.weights,
            host=args.host,
            port=args.port,
            max_upload_mb=args.max_upload_mb,
            max_megapixels=args.max_megapixels,
            tta=args.tta,
            decoder_concat=args.decoder_concat,
            threshold=args.threshold,
        )
        return 0
    options = PredictOptions(
        out=args.out,
        overwrite=args.overwrite,
        tta=args.tta,
        decoder_concat=args.decoder_concat,
        threshold=args.threshold,
    )
    return _run_predict(args.weights, [str(bundled_examples_dir())], options)
