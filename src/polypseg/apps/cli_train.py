"""``polypseg train`` and ``polypseg evaluate``."""

from __future__ import annotations

import argparse
from pathlib import Path

from polypseg.apps.cli_options import (
    DEFAULT_DATA,
    TTA_HELP,
    WEIGHTS_HELP,
    add_weights_options,
    options_from,
    positive_int,
)
from polypseg.config import TrainConfig, load_config, parse_duration, resume_conflicts
from polypseg.data import load_splits, parse_split_sizes
from polypseg.errors import UsageError
from polypseg.evaluation import (
    LITERATURE_CSV,
    EvaluationOptions,
    dataset_names,
    format_literature_table,
    format_table,
    run_evaluation,
    run_evaluations,
)
from polypseg.evaluation.reports import EVALUATION_FIGURES, plot_training_curves, write_evaluation_figures
from polypseg.files import refuse_existing
from polypseg.training import train
from polypseg.weights import resolve


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``evaluate`` to the ``polypseg`` command."""
    _add_train(subparsers)
    _add_evaluate(subparsers)


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
            raise UsageError(
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
    defaults = EvaluationOptions()
    parser.add_argument("--split", default=defaults.split, help=f"train, val, test or all (default: {defaults.split})")
    parser.add_argument(
        "--splits",
        dest="splits_file",
        metavar="SPLITS",
        type=Path,
        default=defaults.splits_file,
        help="splits.json (default: the run's, or the seeded one)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for metrics.json and per_image.csv (several --data: one subfolder each, and literature.csv)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=defaults.batch_size,
        help=f"images per batch (default {defaults.batch_size})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing reports in --out")
    parser.add_argument("--tta", action="store_true", help=TTA_HELP)
    parser.add_argument(
        "--report", action="store_true", help="also write dice_histogram.png and worst_cases.png into --out"
    )
    add_weights_options(parser)
    parser.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    if args.report and args.out is None:
        raise UsageError("--report needs --out (the folder for the figures)")
    data = args.data or [Path(DEFAULT_DATA)]
    args.weights = resolve(args.weights)  # once, for the scores and the figures
    options = options_from(EvaluationOptions, args)
    if len(data) > 1:
        return _evaluate_datasets(args, data, options)
    args.data = data[0]
    if args.report:
        refuse_existing([args.out / name for name in EVALUATION_FIGURES], options.overwrite)
    report = run_evaluation(args.weights, args.data, args.out, options)
    print(format_table(report))
    if args.out is not None:
        print(f"wrote {args.out / 'metrics.json'} and {args.out / 'per_image.csv'}")
    if args.report:
        for path in write_evaluation_figures(report, args.weights, args.data, args.out):
            print(f"wrote {path}")
    return 0


def _evaluate_datasets(args: argparse.Namespace, data: list[Path], options: EvaluationOptions) -> int:
    if args.report:
        for name in dataset_names(data):
            refuse_existing([args.out / name / figure for figure in EVALUATION_FIGURES], options.overwrite)
    rows = run_evaluations(args.weights, data, args.out, options)
    for name, report in rows:
        print(f"{name}: split {report.split}, {report.images} images ({report.split_source}), {report.data}")
    tta = ", flip test-time augmentation" if options.tta else ""
    print(f"polyp literature measures (probability map at the evaluation resolution{tta}):")
    print(format_literature_table(rows))
    if args.out is not None:
        print(f"wrote {args.out / LITERATURE_CSV} and metrics.json, per_image.csv in {args.out}/<dataset>/")
    if args.report:
        for name, report in rows:
            for path in write_evaluation_figures(report, args.weights, report.data, args.out / name):
                print(f"wrote {path}")
    return 0
