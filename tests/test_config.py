"""The training configuration (``polypseg.config``): the repository's configs, bounded numbers, unreadable
YAML named in one line, durations."""

from __future__ import annotations

import pytest
import yaml

from helpers import REPO_ROOT
from polypseg.config import TrainConfig, load_config, parse_duration
from polypseg.errors import InputError


def test_configs_in_the_repository_load():
    for path in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        config = load_config(path)
        assert config.to_dict() == TrainConfig.from_dict(yaml.safe_load(path.read_text())).to_dict()
    seed = load_config(REPO_ROOT / "configs" / "seed.yaml")
    assert (seed.base_channels, seed.lr, seed.batch_size, seed.epochs) == (64, 1e-4, 8, 20)
    assert (seed.scheduler, seed.plateau_factor, seed.plateau_patience, seed.min_lr) == ("plateau", 0.5, 3, 1e-6)
    assert seed.split_sizes == [800, 100, 100] and seed.augment == "none" and seed.monitor == "val_dice"


def test_unknown_config_key_is_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(path)


@pytest.mark.parametrize(
    "line, named",
    [
        ("epochs: -5", "epochs must be an integer from 1"),
        ("epochs: ten", "epochs must be an integer"),
        ("batch_size: 0", "batch_size must be an integer from 1"),
        ("lr: 0", "lr must be a positive number"),
        ("lr: fast", "lr must be a number"),
        ("base_channels: 7", "base_channels must be even"),
        ("base_channels: 400", "base_channels must be an integer from 2 to 256"),
        ("head_kernel_size: 4", "head_kernel_size must be odd"),
        ("image_size: 0", "image_size must be an integer from 16 to 2048"),
        ("image_size: 65536", "image_size must be an integer from 16 to 2048"),
        ("image_size: 100", "image_size must be a multiple of 16"),
        ("boundary_width_px: 1000000000", "boundary_width_px must be an integer from 0 to 64"),
        ("split_sizes: [a, 1, 2]", "split_sizes must be 3 non-negative numbers"),
        ("split_sizes: [8, -1, 2]", "split_sizes must be 3 non-negative numbers"),
    ],
)
def test_config_numbers_are_bounded_and_the_file_is_named(tmp_path, line, named):
    path = tmp_path / "bad.yaml"
    path.write_text(f"{line}\n")
    with pytest.raises(ValueError, match=named) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_config_yaml_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"epochs: 3\nmonitor: \xff\xfe\n")
    with pytest.raises(ValueError, match="cannot read config") as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    "content, named",
    [
        (b"epochs: [3\n", "cannot read config"),  # yaml.YAMLError
        (b"run_id: 2020-13-45\n", "cannot read config: month must be in 1..12"),  # ValueError in PyYAML
        (b"epochs: !!int ten\n", "cannot read config"),
        (b"seed: " + b"[" * 5000 + b"]" * 5000 + b"\n", "cannot read config"),  # RecursionError
        (b"1: 2\n", "keywords must be strings"),  # TypeError from the keyword arguments
        (b"- epochs\n", "a config must be a mapping"),
    ],
)
def test_config_yaml_that_yaml_cannot_read_is_one_input_error(tmp_path, content, named):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(InputError, match=named) as caught:
        load_config(path)
    assert caught.value.path == path and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90.0), ("60m", 3600.0), ("1.5h", 5400.0), ("1h30m", 5400.0), (45, 45.0)]
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-5m", "0", "5 parsecs", "m"])
def test_parse_duration_refuses_nonsense(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_config_takes_budget_strings_and_old_boolean_augment():
    config = TrainConfig.from_dict({"time_budget": "15m", "augment": True})
    assert config.time_budget == 900.0 and config.augment == "strong"
    assert TrainConfig.from_dict({"augment": False}).augment == "none"
    for bad in ({"augment": "wild"}, {"scheduler": "step"}, {"optimizer": "sgd"}, {"ema_decay": 1.5}):
        with pytest.raises(ValueError):
            TrainConfig.from_dict(bad)
    with pytest.raises(ValueError, match="train_sizes"):
        TrainConfig.from_dict({"train_sizes": [100]})
    with pytest.raises(ValueError, match="crop_size"):
        TrainConfig.from_dict({"crop_size": 512})
