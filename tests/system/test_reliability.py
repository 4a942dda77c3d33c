"""Crash safety: a training run killed with SIGKILL at any moment resumes and ends exactly like an
uninterrupted run; checkpoints and ``best/`` are never half-written.

The kills happen in real ``polypseg train`` processes (``tests/system/crash_runner.py`` patches the process it
runs in; the library has no test hooks). Runs are deterministic (``deterministic: true``, fp32,
single-threaded torch, batch order and augmentation keyed to (seed, epoch)), and two uninterrupted runs
on the same CPU are identical bit for bit, so the resumed run is compared bit for bit too: the same
``metrics.csv`` (except the seconds column), the same ``best/`` and the same final weights, optimizer
and scheduler state.
The atomic writers themselves are tested in ``tests/test_files.py`` and ``tests/training/test_checkpoint.py``.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import polypseg
from polypseg.apps.cli import main
from polypseg.training import CheckpointError, load_checkpoint
from polypseg.weights import WeightsError, load_pretrained

RUNNER = Path(__file__).with_name("crash_runner.py")

TINY_CONFIG = """\
base_channels: 4
image_size: 64
precision: '32'
accelerator: cpu
devices: 1
deterministic: true
batch_size: 2
lr: 0.003
scheduler: plateau
plateau_patience: 0
epochs: 4
split_sizes: [8, 2, 2]
boundary_width_px: 1
log_every_n_steps: 1
"""


def subprocess_env() -> dict[str, str]:
    """The environment of a child process that imports the polypseg under test (also from another folder)."""
    source = str(Path(polypseg.__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": path}


def run_cli(tmp_path: Path, *args: str, kill: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    """``polypseg ARGS`` in a fresh process, optionally killed (see tests/system/crash_runner.py)."""
    kill_args = [f"--kill-{kill[0]}", str(kill[1])] if kill else []
    command = [sys.executable, str(RUNNER), *kill_args, "--", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=subprocess_env())


def metrics_rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def assert_same(first: object, second: object, what: str) -> None:
    """Equal bit for bit: tensors with torch.equal, containers element by element."""
    if isinstance(first, torch.Tensor):
        assert isinstance(second, torch.Tensor) and torch.equal(first, second), f"{what} differs"
    elif isinstance(first, dict):
        assert isinstance(second, dict) and first.keys() == second.keys(), f"{what}: keys differ"
        for key in first:
            assert_same(first[key], second[key], f"{what}.{key}")
    elif isinstance(first, list | tuple):
        assert type(first) is type(second) and len(first) == len(second), f"{what}: lengths differ"
        for index, (a, b) in enumerate(zip(first, second, strict=True)):
            assert_same(a, b, f"{what}[{index}]")
    else:
        assert first == second, f"{what} differs: {first!r} != {second!r}"


def assert_same_run(reference: Path, run: Path) -> None:
    assert (run / "splits.json").read_text() == (reference / "splits.json").read_text()
    assert metrics_rows(run) == metrics_rows(reference)
    # Two runs differ in their run id only (each new run draws one; resumes keep it).
    configs = [json.loads((r / "best" / "config.json").read_text()) for r in (run, reference)]
    assert configs[0]["training"]["config"].pop("run_id") != configs[1]["training"]["config"].pop("run_id")
    assert configs[0] == configs[1]
    best = load_file(run / "best" / "model.safetensors")
    assert_same(best, load_file(reference / "best" / "model.safetensors"), "best/")
    last, last_reference = (load_checkpoint(r / "checkpoints" / "last.ckpt") for r in (run, reference))
    for key in ("epoch", "global_step", "state_dict", "optimizer_states", "plateau_scheduler", "callbacks"):
        assert_same(last[key], last_reference[key], key)
    leftovers = [p.name for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if p.name.startswith(".")]
    assert not leftovers


@pytest.mark.slow
def test_killed_again_and_again_resumes_to_the_same_result(synthetic_dataset, tmp_path):
    """Kill mid-epoch, then while writing last.ckpt, then between the two renames of best/; resume each time."""
    data = synthetic_dataset(sizes=[(64, 64)] * 12, mask_suffix=".png")
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG)
    train = ["train", "--config", "tiny.yaml", "--data", str(data)]
    resume = ["train", "--out", "run", "--resume"]

    done = run_cli(tmp_path, *train, "--out", "reference")
    assert done.returncode == 0, done.stderr[-2000:]
    reference = tmp_path / "reference"
    assert len(metrics_rows(reference)) == 4

    # 1. Mid-epoch (4 steps per epoch; step 6 is in epoch 1): last.ckpt is the end of epoch 0.
    done = run_cli(tmp_path, *train, "--out", "run", kill=("at-step", 6))
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    run = tmp_path / "run"
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 0
    assert [row["epoch"] for row in metrics_rows(run)] == ["0"]

    # 2. While writing the next last.ckpt: half a file under a temporary name; last.ckpt is untouched.
    done = run_cli(tmp_path, *resume, kill=("in-save", 1))
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    stale = list((run / "checkpoints").glob(".polypseg-tmp-*.last.ckpt.tmp"))
    assert len(stale) == 1
    with pytest.raises(CheckpointError, match="damaged or incomplete"):
        load_checkpoint(stale[0])
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 0

    # 3. Between moving the old best/ aside and renaming the new one in: no best/ at all, never a mix.
    done = run_cli(tmp_path, *resume, kill=("in-swap", 1))
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert not (run / "best").exists() and (run / ".best.new").is_dir() and (run / ".best.old").is_dir()
    assert not list((run / "checkpoints").glob("*.tmp"))  # cleared when step 3 resumed
    with pytest.raises(WeightsError, match="not found"):
        load_pretrained(run)

    done = run_cli(tmp_path, *resume)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_run(reference, run)


def _one_epoch_run(synthetic_dataset, tmp_path: Path) -> Path:
    data = synthetic_dataset(sizes=[(64, 64)] * 6, mask_suffix=".png")
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG.replace("epochs: 4", "epochs: 1"))
    run = tmp_path / "run"
    args = ["--config", str(tmp_path / "tiny.yaml"), "--data", str(data), "--out", str(run), "--split-sizes", "4,2,0"]
    assert main(["train", *args]) == 0
    return run


def test_damaged_checkpoint_is_named_and_a_missing_one_restarts_the_run(synthetic_dataset, tmp_path, capsys):
    run = _one_epoch_run(synthetic_dataset, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    rows = metrics_rows(run)
    weights = load_file(run / "best" / "model.safetensors")
    original = last.read_bytes()
    capsys.readouterr()
    for damaged in (original[: len(original) // 3], b"", b"garbage" * 100):
        last.write_bytes(damaged)
        assert main(["train", "--out", str(run), "--resume", "--epochs", "2"]) == 2
        err = capsys.readouterr().err.strip()
        assert str(last) in err and "damaged or incomplete" in err and len(err.splitlines()) == 1, err
    assert metrics_rows(run) == rows  # nothing was touched

    # A run killed before its first checkpoint resumes from the start, with its own config and split.
    last.unlink()
    with pytest.warns(UserWarning, match="no checkpoint yet"):
        assert main(["train", "--out", str(run), "--resume"]) == 0
    assert metrics_rows(run) == rows
    assert_same(load_file(run / "best" / "model.safetensors"), weights, "best/")


def test_resume_of_something_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        from polypseg.config import TrainConfig
        from polypseg.training import train

        train(TrainConfig(), None, tmp_path / "nothing", resume=True)


# --------------------------------------------------------------------------------------------------
# Hostile resumes and setups: refused in one line, before anything is written


def _cli_error(capsys, *args: str) -> str:
    capsys.readouterr()
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_failed_resume_leaves_the_run_as_it_was(synthetic_dataset, tmp_path, capsys):
    run = _one_epoch_run(synthetic_dataset, tmp_path)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2"]) == 0
    before = _snapshot(run)
    # Fewer epochs than the run has completed (Lightning raised, after config.yaml was rewritten).
    err = _cli_error(capsys, "train", "--out", str(run), "--resume", "--epochs", "1")
    assert "last.ckpt" in err and "completed 2 epochs" in err, err
    # A dataset folder without the run's images.
    other = synthetic_dataset(sizes=[(64, 64)] * 3, name="other", seed=1, mask_suffix=".png")
    (other / "images" / "sample_000.jpg").rename(other / "images" / "elsewhere_000.jpg")
    (other / "masks" / "sample_000.png").rename(other / "masks" / "elsewhere_000.png")
    err = _cli_error(capsys, "train", "--out", str(run), "--resume", "--data", str(other))
    assert "splits.json" in err and "not in" in err, err
    assert _snapshot(run) == before
    # The run still resumes with its own settings (nothing left to do: both epochs are done).
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert [row["epoch"] for row in metrics_rows(run)] == ["0", "1"]


def test_resume_refuses_settings_other_than_its_length(synthetic_dataset, tmp_path, capsys):
    run = _one_epoch_run(synthetic_dataset, tmp_path)
    before = _snapshot(run)
    for option, value in [("--lr", "0.5"), ("--base-channels", "8"), ("--seed", "7"), ("--split-sizes", "3,3,0")]:
        err = _cli_error(capsys, "train", "--out", str(run), "--resume", option, value)
        assert "config.yaml" in err and "only --epochs and --time-budget may change" in err, err
    assert _snapshot(run) == before


def test_checkpoint_of_another_run_is_refused(synthetic_dataset, tmp_path, capsys):
    run = _one_epoch_run(synthetic_dataset, tmp_path)
    data = synthetic_dataset(sizes=[(64, 64)] * 6, mask_suffix=".png")
    other = tmp_path / "other"
    args = ["--config", str(tmp_path / "tiny.yaml"), "--data", str(data), "--out", str(other), "--split-sizes", "4,2,0"]
    assert main(["train", *args]) == 0
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes((other / "checkpoints" / "last.ckpt").read_bytes())
    before = _snapshot(run)
    err = _cli_error(capsys, "train", "--out", str(run), "--resume", "--epochs", "2")
    assert str(last) in err and "another run" in err, err
    assert _snapshot(run) == before


def test_hand_edited_width_in_config_yaml_is_named(synthetic_dataset, tmp_path, capsys):
    run = _one_epoch_run(synthetic_dataset, tmp_path)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("base_channels: 4", "base_channels: 8"))
    err = _cli_error(capsys, "train", "--out", str(run), "--resume", "--epochs", "2")
    assert str(config) in err and "base_channels" in err, err
    config.write_text(config.read_text().replace("epochs: 1", "epochs: -5"))
    err = _cli_error(capsys, "train", "--out", str(run), "--resume")
    assert str(config) in err and "epochs must be" in err, err


def test_failed_setup_writes_nothing_and_the_retry_works(synthetic_dataset, tiny_unet, tmp_path, capsys):
    from polypseg.weights import save_pretrained

    data = synthetic_dataset(sizes=[(64, 64)] * 6, mask_suffix=".png")
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG.replace("epochs: 4", "epochs: 1"))
    run = tmp_path / "run"
    args = ["train", "--config", str(tmp_path / "tiny.yaml"), "--data", str(data), "--out", str(run)]
    width8 = save_pretrained(tiny_unet, tmp_path / "width8")
    err = _cli_error(capsys, *args, "--split-sizes", "4,2,0", "--init-weights", str(width8))
    assert "base_channels=8" in err, err
    splits = tmp_path / "splits.json"
    splits.write_text('{"train": ["sample_000", "nothing"], "val": ["sample_001"], "test": []}')
    err = _cli_error(capsys, *args, "--splits", str(splits))
    assert str(splits) in err and "1 names of the split are not in" in err, err
    assert not run.exists() or not any(run.iterdir())
    assert main([*args, "--split-sizes", "4,2,0"]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "predict"])
def test_sigterm_before_lightning_starts_exits_143_with_one_line(command, tmp_path, monkeypatch, capsys):
    """SIGTERM while loading (imports, data, weights), before Lightning's handler: one line, exit 143."""
    import polypseg.apps.cli_train
    import polypseg.inference

    def terminated_while_loading(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(polypseg.apps.cli_train, "train", terminated_while_loading)
    monkeypatch.setattr(polypseg.inference.Predictor, "from_pretrained", terminated_while_loading)
    previous = signal.getsignal(signal.SIGTERM)
    args = ["--out", str(tmp_path / "out"), *(["--data", str(tmp_path)] if command == "train" else [str(tmp_path)])]
    assert main([command, *args]) == 143
    assert capsys.readouterr().err.strip().splitlines() == [f"polypseg {command}: terminated (SIGTERM)"]
    assert signal.getsignal(signal.SIGTERM) is previous  # the caller's handler is back


def test_sigterm_exits_143_and_the_run_resumes(synthetic_dataset, tmp_path):
    """Lightning catches SIGTERM and stopped with exit code 0; a terminated train must say so (143)."""
    import time

    data = synthetic_dataset(sizes=[(64, 64)] * 6, mask_suffix=".png")
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG.replace("epochs: 4", "epochs: 40"))
    run = tmp_path / "run"
    command = [sys.executable, str(RUNNER), "--", "train", "--config", "tiny.yaml", "--data", str(data)]
    process = subprocess.Popen(
        [*command, "--out", str(run), "--split-sizes", "4,2,0"],
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 900  # generous: a busy machine starts torch slowly
        while not (run / "metrics.csv").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (run / "metrics.csv").exists(), "no epoch finished in time"
        assert process.poll() is None, "training ended before it could be terminated"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=600)
    finally:
        process.kill()
    assert process.returncode == 143, err[-2000:]
    assert "terminated (SIGTERM)" in err
    completed = load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] + 1
    assert [int(row["epoch"]) for row in metrics_rows(run)] == list(range(completed))  # no half epoch
    assert completed < 40

    done = run_cli(tmp_path, "train", "--out", "run", "--resume", "--epochs", str(completed + 1))
    assert done.returncode == 0, done.stderr[-2000:]
    assert [int(row["epoch"]) for row in metrics_rows(run)] == list(range(completed + 1))
