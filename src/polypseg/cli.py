"""Command line: thin subcommands over the library (``polypseg train|evaluate|predict|demo``).

Every subcommand parses its arguments and calls one library function; errors in the input become one
line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

DEFAULT_DATA = "../shared/datasets/kvasir-seg"


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
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after N optimizer steps")
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from polypseg.config import TrainConfig, load_config
    from polypseg.data import parse_split_sizes
    from polypseg.training import train

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
        split_sizes=parse_split_sizes(args.split_sizes) if args.split_sizes else None,
    )
    data = args.data if args.data is not None or args.resume else Path(DEFAULT_DATA)
    result = train(config, data, args.out, resume=args.resume, splits_file=args.splits, max_steps=args.max_steps)
    if not result.is_global_zero:
        return 0
    score = "n/a" if result.best_score is None else f"{result.best_score:.4f}"
    print(f"best {config.monitor} {score}; weights in {result.best_dir}")
    return 0


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="score weights on a split of a dataset folder")
    parser.add_argument(
        "--weights", default=None, help="weights folder, .safetensors, or run folder (default: bundled)"
    )
    parser.add_argument("--data", type=Path, default=Path(DEFAULT_DATA), help="folder with images/ and masks/")
    parser.add_argument("--split", default="test", help="train, val, test or all (default: test)")
    parser.add_argument("--splits", type=Path, default=None, help="splits.json (default: the run's, or the seeded one)")
    parser.add_argument("--out", type=Path, default=None, help="folder for metrics.json and per_image.csv")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--overwrite", action="store_true", help="replace existing reports in --out")
    parser.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from polypseg.evaluation import format_table, run_evaluation

    report = run_evaluation(
        args.weights,
        args.data,
        args.out,
        split=args.split,
        splits_file=args.splits,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
    )
    print(format_table(report))
    if args.out is not None:
        print(f"wrote {args.out / 'metrics.json'} and {args.out / 'per_image.csv'}")
    return 0


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("predict", help="segment images: masks, overlays and predictions.csv")
    parser.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument(
        "--weights", default=None, help="weights folder, .safetensors, or run folder (default: bundled)"
    )
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default: predictions)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--precision", default="auto", choices=["auto", "32", "bf16"])
    parser.add_argument("--opacity", type=float, default=0.4, help="polyp tint of the overlays, 0-1")
    parser.add_argument(
        "--min-polyp-area",
        type=float,
        default=0.1,
        help="regions under this %% of the image are not counted as polyps (default 0.1)",
    )
    parser.set_defaults(handler=_predict)


def _run_predict(weights: str | None, inputs: Sequence[str], args: argparse.Namespace) -> int:
    from polypseg.inference import Predictor, predict_files, print_result

    predictor = Predictor.from_pretrained(
        weights, precision=args.precision, min_polyp_fraction=args.min_polyp_area / 100.0
    )
    summary = predict_files(
        predictor,
        inputs,
        args.out,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        opacity=args.opacity,
        on_result=print_result,
    )
    print(
        f"{len(summary.rows)} images segmented into {args.out}/ (predictions.csv)"
        + (f"; {len(summary.errors)} failed" if summary.errors else "")
    )
    return 0 if summary.ok else 1


def _predict(args: argparse.Namespace) -> int:
    return _run_predict(args.weights, args.inputs, args)


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="segment the bundled example images with the bundled model")
    parser.add_argument("--weights", default=None, help="weights (default: bundled)")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default: demo-output)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(handler=_demo, batch_size=4, precision="auto", opacity=0.4, min_polyp_area=0.1)


def _demo(args: argparse.Namespace) -> int:
    from polypseg.weights import bundled_examples_dir

    return _run_predict(args.weights, [str(bundled_examples_dir())], args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``polypseg`` command."""
    parser = argparse.ArgumentParser(prog="polypseg", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train(subparsers)
    _add_evaluate(subparsers)
    _add_predict(subparsers)
    _add_demo(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``polypseg`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OSError) as error:
        print(f"polypseg {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
