"""Command line: thin subcommands over the library (``polypseg train|evaluate|predict|demo``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

DEFAULT_DATA = "../shared/datasets/kvasir-seg"


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a U-Net on a Kvasir-SEG style folder")
    parser.add_argument("--config", type=Path, default=None, help="YAML config (default: the card's, configs/seed.yaml)")
    parser.add_argument("--data", type=Path, default=Path(DEFAULT_DATA), help="folder with images/ and masks/")
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
        epochs=args.epochs, base_channels=args.base_channels, batch_size=args.batch_size, lr=args.lr,
        precision=args.precision, accelerator=args.accelerator, devices=devices, num_nodes=args.num_nodes,
        strategy=args.strategy, seed=args.seed, max_images=args.max_images,
        split_sizes=parse_split_sizes(args.split_sizes) if args.split_sizes else None,
    )
    result = train(config, args.data, args.out, resume=args.resume, splits_file=args.splits, max_steps=args.max_steps)
    score = "n/a" if result.best_score is None else f"{result.best_score:.4f}"
    print(f"best {config.monitor} {score}; weights in {result.best_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``polypseg`` command."""
    parser = argparse.ArgumentParser(prog="polypseg", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``polypseg`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"polypseg {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
