"""What a model card is written from: the weights' ``config.json`` and, for a run's ``best/``, the run's files."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from polypseg.errors import InputError, WeightsError, one_line
from polypseg.weights import WeightsLike, inspect_weights, resolve

__all__ = ["Sources", "read_sources"]


@dataclass
class Sources:
    """What a card is written from: the weights' config.json and, for a run's best/, the run's files."""

    weights_dir: Path
    config: dict[str, Any]
    run_dir: Path | None
    training: dict[str, Any]
    splits: dict[str, list[str]] | None
    epochs: list[dict[str, str]]
    evaluation: dict[str, Any] | None
    #: Where the decoder concatenation order came from (see :class:`polypseg.weights.WeightsInfo`).
    concat_source: str = "config.json"

    @property
    def binary(self) -> bool:
        """The binary variant (one output channel)."""
        return self.config.get("num_classes") == 1


def read_sources(
    run_or_weights: WeightsLike, metrics_json: str | Path | None, decoder_concat: str | None = None
) -> Sources:
    """Read the card's sources of ``run_or_weights`` (and ``metrics_json``); the order as :func:`inspect_weights`."""
    weights = resolve(run_or_weights)
    weights_dir = weights.folder
    if not weights.weights_file.is_file():
        raise WeightsError(f"{weights.weights_file}: weights file not found")
    config = dict(weights.config.raw)
    # What the tensors say (task, classes; a foreign file has no config.json to say it) and the order used.
    info = inspect_weights(weights, decoder_concat)
    config = {"num_classes": info.architecture["num_classes"], **config, "task": info.task}
    config["decoder_concat"] = info.architecture["decoder_concat"]
    run_dir = (
        weights_dir.parent if weights_dir.name == "best" and (weights_dir.parent / "config.yaml").exists() else None
    )
    recorded = weights.config.training.get("config")
    training = dict(recorded) if isinstance(recorded, dict) else {}
    if not training and run_dir is not None:
        training = _read_yaml(run_dir / "config.yaml")
    splits = None
    if run_dir is not None and (run_dir / "splits.json").exists():
        splits = _read_json(run_dir / "splits.json")
    epochs: list[dict[str, str]] = []
    if run_dir is not None and (run_dir / "metrics.csv").exists():
        epochs = _read_csv(run_dir / "metrics.csv")
    evaluation = _read_json(Path(metrics_json)) if metrics_json is not None else None
    if evaluation is not None and not isinstance(evaluation.get("metrics"), dict):
        raise InputError(metrics_json, "not a metrics.json of `polypseg evaluate` (no 'metrics' object)")
    return Sources(weights_dir, config, run_dir, training, splits, epochs, evaluation, info.concat_source)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # ValueError: not JSON, not UTF-8, a huge integer
        raise InputError(path, f"cannot read JSON ({one_line(error)})") from None
    if not isinstance(value, dict):
        raise InputError(path, "must hold a JSON object")
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as error:  # ValueError: not UTF-8, a bad date
        raise InputError(path, f"cannot read YAML ({one_line(error)})") from None
    return value if isinstance(value, dict) else {}


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(path, f"cannot read CSV ({one_line(error)})") from None
