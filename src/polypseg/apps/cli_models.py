"""The subcommands around weights and data: ``export``, ``inspect``, ``benchmark``, ``card``, ``push``, ``data``."""

from __future__ import annotations

import argparse
from pathlib import Path

from polypseg.apps.benchmark import format_results, machine_header, run_benchmark
from polypseg.apps.cli_options import DEFAULT_DATA, WEIGHTS_HELP, add_weights_options, positive_int
from polypseg.apps.download import DATASETS, KVASIR_SEG_NOTICE, download_kvasir_seg
from polypseg.deploy.export import export_model
from polypseg.errors import UsageError
from polypseg.evaluation import calibration_paths, score_concat_orders
from polypseg.evaluation.parity import export_parity
from polypseg.files import atomic_write_text, refuse_existing
from polypseg.publish import model_card, push_to_hub
from polypseg.weights import inspect_weights, resolve


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export``, ``inspect``, ``benchmark``, ``card``, ``push`` and ``data`` to the ``polypseg`` command."""
    _add_export(subparsers)
    _add_inspect(subparsers)
    _add_benchmark(subparsers)
    _add_card(subparsers)
    _add_push(subparsers)
    _add_data(subparsers)


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
    add_weights_options(parser, threshold=False)
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    weights = resolve(args.weights)
    calibration = calibration_paths(args.calibration, args.data, weights) if args.int8 else []
    report = export_model(
        weights,
        args.format,
        args.out,
        calibration_images=calibration,
        overwrite=args.overwrite,
        decoder_concat=args.decoder_concat,
    )
    for path in report.files:
        print(f"wrote {path}")
    parities = export_parity(
        weights, args.out, args.format, args.parity_images, int8=bool(calibration), decoder_concat=args.decoder_concat
    )
    for parity in parities:
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
    parser.add_argument("--max-images", type=positive_int, default=20, help="labelled images to score (default 20)")
    add_weights_options(parser)
    parser.set_defaults(handler=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    weights = resolve(args.weights)
    info = inspect_weights(weights, args.decoder_concat)
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
    fit = score_concat_orders(weights, args.data, max_images=args.max_images, threshold=args.threshold)
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
    print(machine_header())
    print("measuring, one case at a time (each in its own process):")
    results = run_benchmark(quick=args.quick, seconds=args.seconds, out=args.out, progress=lambda row: print(" ", row))
    print()
    print(format_results(results))
    print("ratios: inference to PyTorch eager fp32 (same width and batch); training to training fp32")
    return 0 if all(result.error is None for result in results) else 1


def _add_card(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("card", help="write a model card (README.md with Hub metadata) for weights")
    parser.add_argument("--weights", required=True, help="run folder, weights folder, .safetensors or hf://OWNER/REPO")
    parser.add_argument("--metrics", type=Path, default=None, help="metrics.json of polypseg evaluate on these weights")
    parser.add_argument("--repo", default=None, help="OWNER/REPO the card is for (title and usage examples)")
    parser.add_argument("--out", type=Path, default=None, help="file to write, e.g. README.md (default: print it)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_weights_options(parser, threshold=False)
    parser.set_defaults(handler=_card)


def _card(args: argparse.Namespace) -> int:
    if args.out is not None:
        refuse_existing([args.out], args.overwrite)
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
    add_weights_options(parser, threshold=False)
    parser.set_defaults(handler=_push)


def _push(args: argparse.Namespace) -> int:
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
    url = args.url or DATASETS[args.dataset]
    if not 0 < args.max_size_gb < 1 << 20:  # not NaN, not infinite
        raise UsageError(f"--max-size-gb must be positive, got {args.max_size_gb}")
    limit = int(args.max_size_gb * (1 << 30))
    result = download_kvasir_seg(args.dest, url=url, sha256=args.sha256, force=args.force, max_extracted_bytes=limit)
    print(f"{result.pairs} image/mask pairs in {result.path}")
    if not result.verified:
        print(f"note: not checksum-verified (pass --sha256 to verify); the archive's SHA-256 was {result.sha256}")
    print(KVASIR_SEG_NOTICE)
    return 0
