"""Command line: thin subcommands over the library.

``polypseg train|evaluate|predict|demo|export|inspect|benchmark|card|push|data``.

Every subcommand parses its arguments and calls one library function; errors in the input become one
line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

__all__ = ["main"]

DEFAULT_DATA = "../shared/datasets/kvasir-seg"
WEIGHTS_HELP = "weights folder, .safetensors, run folder or hf://OWNER/REPO[@REVISION] (default: bundled)"
TTA_HELP = "flip test-time augmentation: average the predictions of the image and its 3 flips (4x slower)"
CONCAT_HELP = (
    "decoder concatenation order of the weights: skip-up = cat([skip, upsampled]) (polypseg's), up-skip = "
    "cat([upsampled, skip]); default: what config.json records, else skip-up (`polypseg inspect --data` tells)"
)
THRESHOLD_HELP = "binary weights (one output channel): polyp where the sigmoid probability is >= this (default 0.5)"


def _add_weights_options(parser: argparse.ArgumentParser, threshold: bool = True) -> None:
    """``--decoder-concat`` (every command with ``--weights``) and ``--threshold`` (those that segment)."""
    parser.add_argument("--decoder-concat", default=None, choices=["skip-up", "up-skip"], help=CONCAT_HELP)
    if threshold:
        parser.add_argument("--threshold", type=_number_between(0, 1), default=0.5, help=THRESHOLD_HELP)


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a U-Net on a Kvasir-SEG style folder")
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML config (default: the card's, configs/seed.yaml)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"folder with images/ and masks/ (default: the run's on --resume, else {DEFAULT_DATA})",
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder (new, or existing with --resume)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--splits", type=Path, default=None, help="reuse this splits.json")
    parser.add_argument("--split-sizes", default=None, help="train,val,test as counts or fractions")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--base-channels", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--precision", default=None, help="auto, 32, bf16-mixed, 16-mixed")
    parser.add_argument("--accelerator", default=None, help="cpu, gpu, auto")
    parser.add_argument("--devices", default=None, help="number of devices, or auto")
    parser.add_argument("--num-nodes", type=int, default=None)
    parser.add_argument("--strategy", default=None, help="Lightning strategy, e.g. ddp")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-images", type=int, default=None, help="use only the first N images")
    parser.add_argument(
        "--init-weights",
        default=None,
        help="start from these weights (folder, .safetensors, hf://OWNER/REPO, or 'bundled') to fine-tune",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the model for training steps (slow start, faster steps)",
    )
    parser.add_argument(
        "--time-budget",
        default=None,
        help="wall-clock budget, e.g. 60m, 1.5h, 900s: the learning-rate schedule runs over it, training stops "
        "on time and best/ is written (resumed runs count the time already spent)",
    )
    parser.add_argument("--augment", default=None, help="augmentation preset: none, light, robust, strong")
    parser.add_argument("--ema-decay", type=float, default=None, help="EMA of the weights for validation and best/")
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after N optimizer steps")
    parser.add_argument(
        "--task",
        default=None,
        choices=["multiclass", "binary"],
        help="multiclass (the card: 3 classes, CE + Dice) or binary (1 channel, BCE + Dice); default: the config's",
    )
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from polypseg.config import TrainConfig, load_config, parse_duration, resume_conflicts
    from polypseg.data import load_splits, parse_split_sizes
    from polypseg.training import train

    saved = None
    if args.resume and (args.out / "config.yaml").is_file():
        saved = load_config(args.out / "config.yaml")  # the run's own: only --epochs may change on resume
    if saved is not None and args.config is None:
        config = saved
    else:
        config = load_config(args.config) if args.config else TrainConfig()
    devices = args.devices
    if devices is not None and devices.isdigit():
        devices = int(devices)
    config = config.updated(
        epochs=args.epochs,
        base_channels=args.base_channels,
        batch_size=args.batch_size,
        lr=args.lr,
        precision=args.precision,
        accelerator=args.accelerator,
        devices=devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        seed=args.seed,
        max_images=args.max_images,
        init_weights=args.init_weights,
        compile=args.compile,
        split_sizes=parse_split_sizes(args.split_sizes) if args.split_sizes else None,
        time_budget=parse_duration(args.time_budget) if args.time_budget else None,
        augment=args.augment,
        ema_decay=args.ema_decay,
        task=args.task,
    )
    if saved is not None:
        # Settings given on resume that differ from the run's own would be ignored: refuse them instead.
        conflicts = resume_conflicts(saved, config)
        if args.splits is not None and load_splits(args.splits) != load_splits(args.out / "splits.json"):
            conflicts.append(f"--splits {args.splits} (the run's: {args.out / 'splits.json'})")
        if conflicts:
            raise ValueError(
                f"{args.out / 'config.yaml'}: --resume continues the run with its own settings and only --epochs "
                f"and --time-budget may change; given: {'; '.join(conflicts)}"
            )
    data = args.data if args.data is not None or args.resume else Path(DEFAULT_DATA)
    result = train(config, data, args.out, resume=args.resume, splits_file=args.splits, max_steps=args.max_steps)
    if not result.is_global_zero:
        return 0
    score = "n/a" if result.best_score is None else f"{result.best_score:.4f}"
    print(f"best {config.monitor} {score}; weights in {result.best_dir}")
    if (result.run_dir / "metrics.csv").exists():
        from polypseg.reports import plot_training_curves

        print(f"wrote {plot_training_curves(result.run_dir / 'metrics.csv', result.run_dir / 'training_curves.png')}")
    return 0


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="score weights on a split of a dataset folder")
    parser.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        default=None,
        help=f"folder with images/ and masks/ (default: {DEFAULT_DATA}); repeat it to score several datasets in "
        "one run: the Kvasir-SEG folder (the weights' training data) on --split, every other folder whole",
    )
    parser.add_argument("--split", default="test", help="train, val, test or all (default: test)")
    parser.add_argument("--splits", type=Path, default=None, help="splits.json (default: the run's, or the seeded one)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for metrics.json and per_image.csv (several --data: one subfolder each, and literature.csv)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--overwrite", action="store_true", help="replace existing reports in --out")
    parser.add_argument("--tta", action="store_true", help=TTA_HELP)
    parser.add_argument(
        "--report", action="store_true", help="also write dice_histogram.png and worst_cases.png into --out"
    )
    _add_weights_options(parser)
    parser.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from polypseg.evaluation import format_table, run_evaluation

    data = args.data or [Path(DEFAULT_DATA)]
    if len(data) > 1:
        return _evaluate_datasets(args, data)
    args.data = data[0]
    if args.report:
        from polypseg.reports import EVALUATION_FIGURES, refuse_existing

        if args.out is None:
            raise ValueError("--report needs --out (the folder for the figures)")
        refuse_existing(args.out, EVALUATION_FIGURES, args.overwrite)
    report = run_evaluation(
        args.weights,
        args.data,
        args.out,
        split=args.split,
        splits_file=args.splits,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        tta=args.tta,
        decoder_concat=args.decoder_concat,
        threshold=args.threshold,
    )
    print(format_table(report))
    if args.out is not None:
        print(f"wrote {args.out / 'metrics.json'} and {args.out / 'per_image.csv'}")
    if args.report:
        from polypseg.reports import write_evaluation_figures

        for path in write_evaluation_figures(report, args.weights, args.data, args.out):
            print(f"wrote {path}")
    return 0


def _positive_int(text: str) -> int:
    """Argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _number_between(low: float, high: float) -> Callable[[str], float]:
    """Argparse type: a number from ``low`` to ``high`` (no NaN, no infinity)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not low <= value <= high:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"expected a number from {low:g} to {high:g}, got {text!r}")
        return value

    return parse


def _evaluate_datasets(args: argparse.Namespace, data: list[Path]) -> int:
    from polypseg.evaluation import LITERATURE_CSV, format_literature_table, run_evaluations

    if args.report:
        from polypseg.evaluation import dataset_names
        from polypseg.reports import EVALUATION_FIGURES, refuse_existing

        if args.out is None:
            raise ValueError("--report needs --out (the folder for the figures)")
        for name in dataset_names(data):
            refuse_existing(args.out / name, EVALUATION_FIGURES, args.overwrite)
    rows = run_evaluations(
        args.weights,
        data,
        args.out,
        split=args.split,
        splits_file=args.splits,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        tta=args.tta,
        decoder_concat=args.decoder_concat,
        threshold=args.threshold,
    )
    for name, report in rows:
        print(f"{name}: split {report.split}, {report.images} images ({report.split_source}), {report.data}")
    tta = ", flip test-time augmentation" if args.tta else ""
    print(f"polyp literature measures (probability map at the evaluation resolution{tta}):")
    print(format_literature_table(rows))
    if args.out is not None:
        print(f"wrote {args.out / LITERATURE_CSV} and metrics.json, per_image.csv in {args.out}/<dataset>/")
    if args.report:
        from polypseg.reports import write_evaluation_figures

        for name, report in rows:
            for path in write_evaluation_figures(report, args.weights, report.data, args.out / name):
                print(f"wrote {path}")
    return 0


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("predict", help="segment images (masks, overlays, predictions.csv) and videos")
    parser.add_argument("inputs", nargs="+", help="image files, folders or glob patterns; video files (.mp4 ...)")
    parser.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default: predictions)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--batch-size", type=_positive_int, default=4, help="images per network call (default 4)")
    parser.add_argument(
        "--backend",
        default="torch",
        choices=["auto", "torch", "onnxruntime", "openvino"],
        help="inference runtime (default torch; auto: the fastest for this CPU and these weights, exported once "
        "and cached; it says on stderr what it chose and why)",
    )
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "32", "bf16", "int8"], help="int8: OpenVINO exports only"
    )
    parser.add_argument(
        "--opacity", type=_number_between(0, 1), default=0.4, help="polyp tint of the overlays, 0-1 (default 0.4)"
    )
    parser.add_argument(
        "--overlay",
        default="jpg",
        choices=["jpg", "png", "none"],
        help="overlay images as JPEG (default, fast), lossless PNG, or none",
    )
    parser.add_argument(
        "--min-polyp-area",
        type=_number_between(0, 100),
        default=0.1,
        help="regions under this %% of the image are not counted as polyps (default 0.1)",
    )
    parser.add_argument("--tta", action="store_true", help=TTA_HELP)
    _add_weights_options(parser)
    parser.set_defaults(handler=_predict)

    def one_line_error(message: str) -> NoReturn:  # argparse would print the usage first: several lines
        parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")

    parser.error = one_line_error  # type: ignore[method-assign]


def _run_predict(weights: str | None, inputs: Sequence[str], args: argparse.Namespace) -> int:
    from polypseg.inference import Predictor, expand_inputs, predict_files, print_result
    from polypseg.video import predict_videos, print_video_result, split_video_inputs

    start = time.perf_counter()
    videos, inputs = split_video_inputs(inputs)
    # How many images auto's first-export decision is for (a video: many frames, so unknown here).
    count = None if videos or args.backend != "auto" else len(expand_inputs(inputs, exclude=args.out)[0])
    predictor = Predictor.from_pretrained(
        weights,
        backend=args.backend,
        precision=args.precision,
        tta=args.tta,
        decoder_concat=args.decoder_concat,
        min_polyp_fraction=args.min_polyp_area / 100.0,
        images=count,
        threshold=args.threshold,
    )
    export_seconds = _report_backend(predictor.backend)
    ok = True
    if inputs or not videos:
        summary = predict_files(
            predictor,
            inputs,
            args.out,
            overwrite=args.overwrite,
            batch_size=args.batch_size,
            opacity=args.opacity,
            on_result=print_result,
            overlay_format=args.overlay,
        )
        print(
            f"{len(summary.rows)} images segmented into {args.out}/ (predictions.csv)"
            + (f"; {len(summary.errors)} failed" if summary.errors else "")
            + _throughput(len(summary.rows), time.perf_counter() - start, export_seconds)
        )
        ok = summary.ok
    if videos:
        done, errors = predict_videos(
            predictor,
            videos,
            args.out,
            overwrite=args.overwrite,
            batch_size=args.batch_size,
            opacity=args.opacity,
            on_result=print_video_result,
        )
        print(f"{len(done)} videos segmented into {args.out}/" + (f"; {len(errors)} failed" if errors else ""))
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
    return _run_predict(args.weights, args.inputs, args)


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="segment the bundled example images with the bundled model")
    parser.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default: demo-output)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--tta", action="store_true", help=TTA_HELP + "; with --web: the page's TTA default")
    parser.add_argument("--web", action="store_true", help="serve a web page instead (needs polypseg[demo])")
    parser.add_argument("--host", default="127.0.0.1", help="--web: interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="--web: port (default: 7860)")
    parser.add_argument(
        "--max-upload-mb", type=float, default=20.0, help="--web: largest upload per file, in MB (default: 20)"
    )
    parser.add_argument(
        "--max-megapixels", type=float, default=40.0, help="--web: largest image segmented, in MP (default: 40)"
    )
    _add_weights_options(parser)
    parser.set_defaults(
        handler=_demo, batch_size=4, backend="torch", precision="auto", opacity=0.4, min_polyp_area=0.1, overlay="jpg"
    )


def _demo(args: argparse.Namespace) -> int:
    from polypseg.weights import bundled_examples_dir

    if args.web:
        from polypseg.webdemo import serve

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
    return _run_predict(args.weights, [str(bundled_examples_dir())], args)


def _add_card(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("card", help="write a model card (README.md with Hub metadata) for weights")
    parser.add_argument("--weights", required=True, help="run folder, weights folder, .safetensors or hf://OWNER/REPO")
    parser.add_argument("--metrics", type=Path, default=None, help="metrics.json of polypseg evaluate on these weights")
    parser.add_argument("--repo", default=None, help="OWNER/REPO the card is for (title and usage examples)")
    parser.add_argument("--out", type=Path, default=None, help="file to write, e.g. README.md (default: print it)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_weights_options(parser, threshold=False)
    parser.set_defaults(handler=_card)


def _card(args: argparse.Namespace) -> int:
    from polypseg.hub import model_card
    from polypseg.io import atomic_write_text

    if args.out is not None and args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out}: exists; pass --overwrite to replace it")
    text = model_card(args.weights, args.metrics, repo_id=args.repo, decoder_concat=args.decoder_concat)
    if args.out is None:
        print(text, end="")
    else:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    return 0


def _add_push(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("push", help="upload weights, config.json and a model card to the Hugging Face Hub")
    parser.add_argument("--weights", required=True, help="weights folder, .safetensors or run folder")
    parser.add_argument("--repo", required=True, help="OWNER/REPO on the Hub (created if missing)")
    parser.add_argument("--metrics", type=Path, default=None, help="metrics.json of polypseg evaluate, for the card")
    parser.add_argument("--card", type=Path, default=None, help="upload this file as README.md instead of a new card")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument(
        "--branch", "--revision", dest="revision", metavar="BRANCH", help="branch to commit to (default: main)"
    )
    parser.add_argument("--token", default=None, help="Hub token with write access (default: HF_TOKEN or login)")
    parser.add_argument("--message", default=None, help="commit message")
    _add_weights_options(parser, threshold=False)
    parser.set_defaults(handler=_push)


def _push(args: argparse.Namespace) -> int:
    from polypseg.hub import push_to_hub

    url = push_to_hub(
        args.weights,
        args.repo,
        metrics_json=args.metrics,
        card=args.card,
        private=args.private,
        revision=args.revision,
        token=args.token,
        commit_message=args.message,
        decoder_concat=args.decoder_concat,
    )
    print(f"pushed to {url}")
    return 0


def _add_data(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="datasets: download")
    actions = parser.add_subparsers(dest="data_command", required=True, metavar="{download}")
    download = actions.add_parser("download", help="download and unpack a dataset (Kvasir-SEG)")
    download.add_argument("dataset", choices=["kvasir-seg"])
    download.add_argument("--dest", type=Path, required=True, help="folder to put kvasir-seg/ in")
    download.add_argument("--url", default=None, help="archive URL (default: the official kvasir-seg.zip)")
    download.add_argument("--sha256", default=None, help="expected SHA-256 of the archive (default: not verified)")
    download.add_argument("--force", action="store_true", help="replace an existing DEST/kvasir-seg")
    download.add_argument(
        "--max-size-gb",
        type=float,
        default=2.0,
        help="refuse an archive that unpacks to more than this many GiB (zip-bomb guard; default 2)",
    )
    download.set_defaults(handler=_data_download)


def _data_download(args: argparse.Namespace) -> int:
    from polypseg.download import DATASETS, KVASIR_SEG_NOTICE, download_kvasir_seg

    url = args.url or DATASETS[args.dataset]
    if not args.max_size_gb > 0:
        raise ValueError(f"--max-size-gb must be positive, got {args.max_size_gb}")
    limit = int(args.max_size_gb * (1 << 30))
    result = download_kvasir_seg(args.dest, url=url, sha256=args.sha256, force=args.force, max_extracted_bytes=limit)
    print(f"{result.pairs} image/mask pairs in {result.path}")
    if not result.verified:
        print(f"note: not checksum-verified (pass --sha256 to verify); the archive's SHA-256 was {result.sha256}")
    print(KVASIR_SEG_NOTICE)
    return 0


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export weights to ONNX or OpenVINO, with a parity check")
    parser.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    parser.add_argument("--format", choices=["onnx", "openvino"], required=True)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--int8", action="store_true", help="also write an NNCF int8 model (OpenVINO)")
    parser.add_argument(
        "--calibration", default=None, help="folder of images for int8 calibration (default: training images of --data)"
    )
    parser.add_argument("--data", type=Path, default=Path(DEFAULT_DATA), help="dataset for default calibration")
    parser.add_argument(
        "--parity-images", nargs="*", default=(), help="images for the parity check (default: examples)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export")
    _add_weights_options(parser, threshold=False)
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from polypseg.export import calibration_paths, export_model

    calibration = calibration_paths(args.calibration, args.data, args.weights) if args.int8 else []
    report = export_model(
        args.weights,
        args.format,
        args.out,
        parity_images=args.parity_images,
        calibration_images=calibration,
        overwrite=args.overwrite,
        decoder_concat=args.decoder_concat,
    )
    for path in report.files:
        print(f"wrote {path}")
    for parity in report.parity:
        print(f"parity with PyTorch fp32, {parity}")
    return 0


def _add_inspect(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect", help="say what was read off a weights file; with --data, which decoder concat order fits"
    )
    parser.add_argument("weights", nargs="?", default=None, help=WEIGHTS_HELP)
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="folder with images/ and masks/: score both decoder concat orders on up to 20 of its labelled images",
    )
    parser.add_argument("--max-images", type=_positive_int, default=20, help="labelled images to score (default 20)")
    _add_weights_options(parser)
    parser.set_defaults(handler=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    from polypseg.weights import inspect_weights

    info = inspect_weights(args.weights, args.decoder_concat)
    arch = info.architecture
    classes = "1 (binary: sigmoid, polyp where >= threshold)" if info.task == "binary" else str(arch["num_classes"])
    layout = "polypseg (config.json)" if info.layout == "polypseg" else "foreign, tensors mapped by structure"
    source = {
        "argument": "given with --decoder-concat",
        "config.json": "recorded in config.json",
        "default": "polypseg's own (config.json older than the setting)",
        "assumed": "assumed: no config.json records it, and the tensors cannot tell",
    }[info.concat_source]
    print(f"weights: {info.path}")
    print(f"layout: {layout}")
    print(f"task: {info.task}")
    print(f"output classes: {classes}")
    print(f"width (base_channels): {arch['base_channels']}, input channels: {arch['in_channels']}")
    print(f"head kernel: {arch['head_kernel_size']}x{arch['head_kernel_size']}")
    folded = info.folded_biases
    examples = f" ({', '.join(folded[:3])}{', ...' if len(folded) > 3 else ''})" if folded else ""
    print(f"conv biases folded into BatchNorm: {len(folded)}{examples}")
    print(f"biases used as they are: {len(info.kept_biases)}; missing, set to zero: {len(info.zero_biases)}")
    print(f"decoder concat: {arch['decoder_concat']} ({source})")
    if args.data is None:
        if info.concat_source == "assumed":
            print("to check the order, pass --data DIR (a folder with images/ and masks/)")
        return 0
    from polypseg.evaluation import score_concat_orders

    fit = score_concat_orders(args.weights, args.data, max_images=args.max_images, threshold=args.threshold)
    for order, dice in fit.dice.items():
        print(f"polyp Dice with {order} on {fit.images} labelled images of {args.data}: {dice:.4f}")
    other = min(fit.dice, key=lambda order: fit.dice[order])
    print(
        f"fits: {fit.best} (Dice {fit.dice[fit.best]:.4f} vs {fit.dice[other]:.4f}); "
        f"load with --decoder-concat {fit.best} (Python: decoder_concat={fit.best!r})"
    )
    return 0


def _add_benchmark(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("benchmark", help="speed and memory of every backend, side by side")
    parser.add_argument("--quick", action="store_true", help="fewer cases, no torch.compile, about 3 minutes")
    parser.add_argument("--seconds", type=float, default=None, help="minimum timing per case")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.set_defaults(handler=_benchmark)


def _benchmark(args: argparse.Namespace) -> int:
    from polypseg.benchmark import format_results, machine_header, run_benchmark

    print(machine_header())
    print("measuring, one case at a time (each in its own process):")
    results = run_benchmark(quick=args.quick, seconds=args.seconds, out=args.out, progress=lambda row: print(" ", row))
    print()
    print(format_results(results))
    print("ratios: inference to PyTorch eager fp32 (same width and batch); training to training fp32")
    return 0 if all(result.error is None for result in results) else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``polypseg`` command."""
    parser = argparse.ArgumentParser(prog="polypseg", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train(subparsers)
    _add_evaluate(subparsers)
    _add_predict(subparsers)
    _add_demo(subparsers)
    _add_export(subparsers)
    _add_inspect(subparsers)
    _add_benchmark(subparsers)
    _add_card(subparsers)
    _add_push(subparsers)
    _add_data(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``polypseg`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        return args.handler(args)
    except (ValueError, OSError, ImportError) as error:  # ImportError: an optional extra is not installed
        print(f"polypseg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (SystemExit, Terminated) as exit_:
        if isinstance(exit_, SystemExit) and not _is_sigterm(exit_):
            raise
        # Lightning stops train/evaluate on SIGTERM by raising SystemExit(None), which would exit 0. A run
        # stops between batches: its last completed epoch's checkpoint stands and --resume continues from it.
        # Elsewhere (loading data or weights, predict) _on_sigterm unwinds the command, so temporary files
        # are removed on the way out.
        print(f"polypseg {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return SIGTERM_EXIT_CODE
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


class Terminated(BaseException):
    """Raised by the SIGTERM handler of :func:`main` (a ``BaseException``, so ``except Exception`` lets it by)."""


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM outside Lightning's fit/test loops: unwind the command (``main`` then exits 143 with a line).

    While Lightning runs, its own handler is installed and calls this one after it; Lightning then stops
    between batches (``SIGTERMException``), so this handler does nothing.
    """
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        raise Terminated


#: The exit code of a command stopped by SIGTERM (128 + 15, as a shell reports a process killed by it).
SIGTERM_EXIT_CODE = 128 + 15


def _is_sigterm(exit_: SystemExit) -> bool:
    exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return exceptions is not None and isinstance(exit_, exceptions.SIGTERMException)


if __name__ == "__main__":
    sys.exit(main())
