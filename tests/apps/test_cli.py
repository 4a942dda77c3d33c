"""The command line: thin entry points, one-line errors, exit codes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from polypseg.apps import cli_models
from polypseg.apps.cli import main
from polypseg.apps.cli_predict import _throughput
from polypseg.config import load_config
from polypseg.data import DatasetError
from polypseg.errors import InputError, MissingExtraError, UsageError, WeightsError
from polypseg.training import CheckpointError
from polypseg.weights import save_pretrained


@pytest.fixture
def tiny_weights(tiny_unet, tmp_path):
    return save_pretrained(tiny_unet, tmp_path / "weights", metadata={"input_size": [64, 64]})


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and len(err.splitlines()) == 1, err
    return err


def test_help_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "polypseg.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("train", "evaluate", "predict", "demo"):
        assert command in out.stdout


def test_predict_prints_one_line_per_image(tiny_weights, synthetic_dataset, tmp_path, capsys):
    data = synthetic_dataset()
    out = tmp_path / "out"
    assert main(["predict", "--weights", str(tiny_weights), str(data / "images"), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and "polyp area" in lines[0] and "4 images segmented" in lines[-1]
    assert len(list(out.glob("*_overlay.jpg"))) == 4


def test_predict_bad_file_exits_non_zero_and_does_the_rest(tiny_weights, synthetic_dataset, tmp_path, capsys):
    data = synthetic_dataset()
    (data / "images" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    code = main(["predict", "--weights", str(tiny_weights), str(data / "images"), "--out", str(out)])
    assert code == 1
    captured = capsys.readouterr()
    assert "empty.jpg" in captured.err and len(captured.err.strip().splitlines()) == 1
    with (out / "predictions.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4


def test_predict_refuses_to_overwrite(tiny_weights, synthetic_dataset, tmp_path, capsys):
    data = synthetic_dataset()
    args = ["predict", "--weights", str(tiny_weights), str(data / "images"), "--out", str(tmp_path / "out")]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "--overwrite" in one_line_error(capsys)
    assert main([*args, "--overwrite"]) == 0


def test_predict_with_missing_weights(tmp_path, capsys):
    assert main(["predict", "--weights", str(tmp_path / "nothing"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "nothing" in one_line_error(capsys)


def test_train_missing_mask_is_reported_before_training(synthetic_dataset, tmp_path, capsys):
    data = synthetic_dataset()
    (data / "masks" / "sample_002.jpg").unlink()
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--base-channels", "4"])
    assert code == 2
    err = one_line_error(capsys)
    assert "sample_002.jpg" in err and "no mask" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_unreadable_image_is_reported_before_training(synthetic_dataset, tmp_path, capsys):
    data = synthetic_dataset(sizes=[(64, 64)] * 6)
    (data / "images" / "sample_001.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--split-sizes", "4,1,1"])
    assert code == 2
    assert "sample_001.jpg" in one_line_error(capsys)


def test_train_empty_folder(tmp_path, capsys):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 2
    assert "no images" in one_line_error(capsys)


def test_train_and_evaluate_through_the_cli(synthetic_dataset, tmp_path, capsys):
    data = synthetic_dataset(sizes=[(64, 64)] * 10)
    config = tmp_path / "tiny.yaml"
    config.write_text("base_channels: 4\nimage_size: 64\nprecision: '32'\naccelerator: cpu\ndevices: 1\n")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--config",
                str(config),
                "--data",
                str(data),
                "--out",
                str(run),
                "--epochs",
                "1",
                "--split-sizes",
                "6,2,2",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    assert "best val_dice" in capsys.readouterr().out
    report = tmp_path / "report"
    assert main(["evaluate", "--weights", str(run), "--data", str(data), "--out", str(report)]) == 0
    out = capsys.readouterr().out
    assert "3-class mean (card)" in out and "polyp, mean per image" in out
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["images"] == 2 and metrics["split_source"].endswith("splits.json")
    for key in (
        "loss",
        "mean_dice",
        "dice_boundary",
        "iou_polyp",
        "polyp_dice",
        "polyp_dice_dataset",
        "polyp_precision",
        "polyp_recall",
    ):
        assert key in metrics["metrics"]
    with (report / "per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    test_names = json.loads((run / "splits.json").read_text())["test"]
    assert sorted(r["name"] for r in rows) == sorted(test_names)
    # Existing reports are protected; --split all scores every image.
    assert main(["evaluate", "--weights", str(run), "--data", str(data), "--out", str(report)]) == 2
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--weights",
                str(run),
                "--data",
                str(data),
                "--split",
                "all",
                "--out",
                str(report),
                "--overwrite",
            ]
        )
        == 0
    )
    assert json.loads((report / "metrics.json").read_text())["images"] == 10


def test_demo_runs_on_the_bundled_examples(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert all("polyp area" in line for line in lines[:-1]) and len(lines) >= 5
    assert len(list(out.glob("*_overlay.jpg"))) == len(lines) - 1


@pytest.mark.parametrize(
    "option, value",
    [
        ("--batch-size", "-3"),
        ("--batch-size", "0"),
        ("--batch-size", "two"),
        ("--opacity", "5"),
        ("--opacity", "nan"),
        ("--opacity", "-0.5"),
        ("--min-polyp-area", "-5"),
        ("--min-polyp-area", "inf"),
        ("--min-polyp-area", "101"),
    ],
)
def test_predict_refuses_numbers_out_of_range(tiny_weights, write_image, tmp_path, capsys, option, value):
    """Issue 10 finding 12: a clear argparse error (exit 2) before anything is written, not a traceback."""
    write_image(tmp_path / "in" / "a.jpg", size=(40, 30))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as caught:
        main(["predict", "--weights", str(tiny_weights), str(tmp_path / "in"), "--out", str(out), option, value])
    assert caught.value.code == 2
    err = one_line_error(capsys)
    assert f"argument {option}: expected a" in err and repr(value) in err
    assert not out.exists()


def test_predict_two_folders_with_clashing_names(tiny_weights, write_image, tmp_path, capsys):
    """Issue 10 finding 4: a/same.jpg, a/same-2.jpg, b/same.jpg -> three separate output sets, exit 0."""
    for name in ("a/same.jpg", "a/same-2.jpg", "b/same.jpg"):
        write_image(tmp_path / name, size=(40, 30))
    out = tmp_path / "out"
    assert (
        main(["predict", "--weights", str(tiny_weights), str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
        == 0
    )
    assert "3 images segmented" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*_mask.png")) == ["same-2_mask.png", "same-3_mask.png", "same_mask.png"]
    with (out / "predictions.csv").open() as handle:
        stems = {row["file"].replace(str(tmp_path), "").lstrip("/"): row["stem"] for row in csv.DictReader(handle)}
    assert stems == {"a/same.jpg": "same", "a/same-2.jpg": "same-2", "b/same.jpg": "same-3"}


LITERATURE_HEADERS = ["mDice", "mIoU", "wFm", "Sm", "meanEm", "maxEm", "MAE"]


def test_evaluate_prints_and_writes_the_literature_measures(tiny_weights, synthetic_dataset, tmp_path, capsys):
    data = synthetic_dataset(sizes=[(64, 64)] * 3, name="other")
    report = tmp_path / "report"
    assert (
        main(
            ["evaluate", "--weights", str(tiny_weights), "--data", str(data), "--split", "all"] + ["--out", str(report)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "3-class mean (card)" in out and "polyp literature measures (probability map at 64x64)" in out
    header = next(line for line in out.splitlines() if line.startswith("dataset"))
    assert header.split() == ["dataset", "images", *LITERATURE_HEADERS]
    metrics = json.loads((report / "metrics.json").read_text())
    for key in ("lit_mean_dice", "lit_mean_iou", "lit_wfm", "lit_sm", "lit_mean_em", "lit_max_em", "lit_mae"):
        assert 0.0 <= metrics["metrics"][key] <= 1.07, key
    assert "pysodmetrics" in metrics["literature_protocol"] and "PraNet" in metrics["literature_protocol"]


def test_evaluate_several_datasets_in_one_run(tiny_weights, synthetic_dataset, tmp_path, capsys):
    # A Kvasir-SEG-named folder is scored on its split; any other folder is scored whole.
    kvasir = synthetic_dataset(sizes=[(64, 64)] * 5, name="kvasir-seg", seed=1)
    other = synthetic_dataset(sizes=[(64, 48), (48, 64), (64, 64)], name="cvc-tiny", seed=2)
    splits = tmp_path / "splits.json"
    splits.write_text(
        json.dumps(
            {"train": ["sample_000", "sample_001", "sample_002"], "val": [], "test": ["sample_003", "sample_004"]}
        )
    )
    out = tmp_path / "multi"
    args = ["evaluate", "--weights", str(tiny_weights), "--data", str(kvasir), "--data", str(other)]
    assert main([*args, "--splits", str(splits), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    header = printed.index(next(line for line in printed if line.startswith("dataset")))
    assert printed[header].split() == ["dataset", "images", *LITERATURE_HEADERS]
    assert printed[header + 1].split()[:2] == ["kvasir-seg", "2"]
    assert printed[header + 2].split()[:2] == ["cvc-tiny", "3"]
    with (out / "literature.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["dataset"], r["split"], r["images"]) for r in rows] == [
        ("kvasir-seg", "test", "2"),
        ("cvc-tiny", "all", "3"),
    ]
    assert list(rows[0])[-7:] == LITERATURE_HEADERS
    for name, images in (("kvasir-seg", 2), ("cvc-tiny", 3)):
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["images"] == images and (out / name / "per_image.csv").exists()
        row = next(r for r in rows if r["dataset"] == name)
        assert float(row["mDice"]) == pytest.approx(metrics["metrics"]["lit_mean_dice"], abs=5e-5)
        assert float(row["MAE"]) == pytest.approx(metrics["metrics"]["lit_mae"], abs=5e-5)
    # The same numbers as evaluating the folder on its own (both in fp32).
    alone = tmp_path / "alone"
    assert (
        main(["evaluate", "--weights", str(tiny_weights), "--data", str(other), "--split", "all", "--out", str(alone)])
        == 0
    )
    assert (
        json.loads((alone / "metrics.json").read_text())["metrics"]
        == json.loads((out / "cvc-tiny" / "metrics.json").read_text())["metrics"]
    )
    # Existing reports are refused before anything is scored; --overwrite replaces them.
    capsys.readouterr()
    assert main([*args, "--splits", str(splits), "--out", str(out)]) == 2
    assert "--overwrite" in one_line_error(capsys)
    assert main([*args, "--splits", str(splits), "--out", str(out), "--overwrite", "--report"]) == 0
    for name in ("kvasir-seg", "cvc-tiny"):
        assert (out / name / "dice_histogram.png").exists() and (out / name / "worst_cases.png").exists()


def test_evaluate_builds_one_options_object_for_one_or_several_datasets(monkeypatch, capsys):
    from dataclasses import FrozenInstanceError
    from pathlib import Path

    from polypseg.evaluation import EvaluationOptions

    calls = []
    monkeypatch.setattr("polypseg.apps.cli_train.resolve", lambda weights: weights)
    monkeypatch.setattr("polypseg.apps.cli_train.run_evaluation", lambda *a: calls.append(a))
    monkeypatch.setattr("polypseg.apps.cli_train.format_table", lambda report: "")
    monkeypatch.setattr("polypseg.apps.cli_train.run_evaluations", lambda *a: calls.append(a) or [])
    monkeypatch.setattr("polypseg.apps.cli_train.format_literature_table", lambda rows: "")
    assert main(["evaluate", "--weights", "w", "--data", "a"]) == 0
    assert main(["evaluate", "--weights", "w", "--data", "a", "--data", "b", "--split", "val", "--tta"]) == 0
    args = ["--batch-size", "2", "--overwrite", "--decoder-concat", "up-skip", "--threshold", "0.7"]
    assert main(["evaluate", "--data", "a", "--splits", "s.json", *args]) == 0
    # The CLI's defaults are the options' defaults; each flag lands in its field.
    assert calls[0] == ("w", Path("a"), None, EvaluationOptions())
    assert calls[1] == ("w", [Path("a"), Path("b")], None, EvaluationOptions(split="val", tta=True))
    assert calls[2][3] == EvaluationOptions(
        splits_file=Path("s.json"),
        batch_size=2,
        overwrite=True,
        decoder_concat="up-skip",
        threshold=0.7,
    )
    with pytest.raises(FrozenInstanceError):
        calls[0][3].split = "val"  # type: ignore[misc]
    # --report needs --out, with one dataset or several, before anything is loaded.
    capsys.readouterr()
    for data in (["--data", "a"], ["--data", "a", "--data", "b"]):
        assert main(["evaluate", *data, "--report"]) == 2
        assert "--report needs --out" in one_line_error(capsys)
    with pytest.raises(SystemExit):
        main(["evaluate", "--batch-size", "0"])
    assert "--batch-size: expected a whole number of at least 1" in capsys.readouterr().err
    assert len(calls) == 3


# --- which errors are one line: what a user gave (PolypsegError), and OSError; a bug keeps its traceback ---


def _raising(error: BaseException):
    def handler(args):  # type: ignore[no-untyped-def]
        raise error

    return handler


@pytest.mark.parametrize("error", [ValueError("a bug in numpy"), RuntimeError("a bug in torch")])
def test_a_bug_in_a_command_keeps_its_traceback(monkeypatch, tmp_path, capsys, error):
    monkeypatch.setattr(cli_models, "_data_download", _raising(error))
    with pytest.raises(type(error), match="a bug"):
        main(["data", "download", "kvasir-seg", "--dest", str(tmp_path)])
    assert "error:" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "error",
    [
        UsageError("--max-size-gb must be positive, got 0.0"),
        InputError("/data/a\nb.jpg", "not an image file Pillow can read"),
        WeightsError("w/model.safetensors: tensor 'head.0.weight' is missing"),
        MissingExtraError("video input needs PyAV (No module named 'av'): pip install 'polypseg[video]'"),
        DatasetError("/data/images: no images (.jpg)"),
        CheckpointError("run/checkpoints/last.ckpt: checkpoint not found"),
        FileNotFoundError("/data: no such folder"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_what_a_user_gave_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys, error):
    monkeypatch.setattr(cli_models, "_data_download", _raising(error))
    assert main(["data", "download", "kvasir-seg", "--dest", str(tmp_path)]) == 2
    assert one_line_error(capsys) == f"polypseg data: error: {error}"


def test_a_missing_extra_names_its_pip_install(tiny_weights, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    args = ["predict", "--weights", str(tiny_weights), str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = one_line_error(capsys)
    assert err.startswith("polypseg predict: error: video input needs PyAV"), err
    assert err.endswith("pip install 'polypseg[video]'"), err


def test_the_web_demo_without_gradio_names_its_pip_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["demo", "--web"]) == 2
    err = one_line_error(capsys)
    assert err.startswith("polypseg demo: error: the web demo needs Gradio"), err
    assert err.endswith("pip install 'polypseg[demo]'"), err


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--epochs", "many"],
        ["evaluate", "--no-such-flag"],
        ["predict", "--batch-size", "0", "x.jpg"],
        ["export", "--format", "tflite"],
        ["data", "download", "--no-such-flag"],
        ["no-such-command"],
    ],
)
def test_every_argument_error_is_one_line_naming_the_command(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = one_line_error(capsys)
    assert err.startswith("polypseg") and ": error: " in err and err.endswith("(see --help)")
    assert "usage:" not in err
    if argv[0] != "no-such-command":
        assert err.startswith(f"polypseg {argv[0]}")


def test_cli_time_budget_and_presets(synthetic_dataset, tmp_path, capsys):
    data = synthetic_dataset(sizes=[(64, 64)] * 12)
    config = tmp_path / "c.yaml"
    config.write_text("base_channels: 4\nimage_size: 64\nprecision: '32'\nsplit_sizes: [8, 2, 2]\nbatch_size: 4\n")
    args = ["train", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "run")]
    assert main([*args, "--time-budget", "3s", "--augment", "light", "--ema-decay", "0.9"]) == 0
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert (saved.time_budget, saved.augment, saved.ema_decay) == (3.0, "light", 0.9)
    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path / "run2"), "--time-budget", "soon"]) == 2
    assert "not a duration" in capsys.readouterr().err


def test_throughput_is_given_with_and_without_the_export():
    assert (
        _throughput(10, 14.0, 12.0)
        == " in 14.0 s, 0.71 images/s (5.00 images/s in 2.0 s without the 12.0 s first export)"
    )
    assert _throughput(10, 2.0, 0.0) == " in 2.0 s, 5.00 images/s"
    assert _throughput(0, 2.0, 0.0) == ""
