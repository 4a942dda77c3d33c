"""Figures: evaluation Dice histogram and worst cases, training curves."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from polypseg.apps.cli import main
from polypseg.errors import InputError
from polypseg.evaluation.reports import DPI, plot_training_curves, worst_cases
from polypseg.training import EpochCSVLogger
from polypseg.weights import save_pretrained


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        return image.size


def test_worst_cases_are_the_lowest_polyp_dice():
    rows = [
        {"name": "a", "polyp_dice": 0.9},
        {"name": "b", "polyp_dice": 0.1},
        {"name": "c", "polyp_dice": 0.5},
        {"name": "d", "polyp_dice": 0.1},
        {"name": "e", "polyp_dice": 0.0},
        {"name": "f", "polyp_dice": 0.7},
    ]
    assert worst_cases(rows, 3) == ["e", "b", "d"]
    assert worst_cases(rows) == ["e", "b", "d", "c", "f"]
    assert worst_cases(rows[:2], 5) == ["b", "a"]


def test_training_curves_from_metrics_csv(tmp_path):
    metrics = tmp_path / "run" / "metrics.csv"
    metrics.parent.mkdir()
    with metrics.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=EpochCSVLogger.COLUMNS)
        writer.writeheader()
        for epoch, (train, val, dice, lr) in enumerate(
            [(1.2, 1.0, 0.3, 1e-4), ("", 0.8, 0.5, 1e-4), (0.7, 0.75, 0.6, 5e-5)]
        ):
            writer.writerow({"epoch": epoch, "train_loss": train, "val_loss": val, "val_dice": dice, "lr": lr})
    out = plot_training_curves(metrics, tmp_path / "curves.png")
    width, height = png_size(out)
    assert 800 <= width <= 2000 and 250 <= height <= 800
    assert not list(tmp_path.glob(".*"))

    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(EpochCSVLogger.COLUMNS) + "\n")
    with pytest.raises(ValueError, match="no epochs"):
        plot_training_curves(empty, tmp_path / "none.png")


def test_evaluate_report_writes_the_figures(tiny_unet, synthetic_dataset, tmp_path, capsys):
    data = synthetic_dataset(sizes=[(64, 64)] * 6)
    weights = save_pretrained(tiny_unet, tmp_path / "weights", metadata={"input_size": [64, 64]})
    out = tmp_path / "report"
    args = ["evaluate", "--weights", str(weights), "--data", str(data), "--split", "all", "--out", str(out)]
    assert main([*args, "--report"]) == 0
    printed = capsys.readouterr().out
    assert "dice_histogram.png" in printed and "worst_cases.png" in printed
    width, height = png_size(out / "dice_histogram.png")
    assert 400 <= width <= 1500 and 250 <= height <= 1000
    # Six images: the five worst are shown, one row each (3 inches per row).
    width, height = png_size(out / "worst_cases.png")
    assert width == 9 * DPI and height == round((3 * 5 + 0.3) * DPI)

    # The figures are protected like the other reports, and checked before the evaluation runs.
    assert main([*args, "--report"]) == 2
    err = capsys.readouterr().err.strip()
    assert "dice_histogram.png" in err and "--overwrite" in err and len(err.splitlines()) == 1


def test_evaluate_report_needs_out(capsys):
    assert main(["evaluate", "--report"]) == 2
    assert "--report needs --out" in capsys.readouterr().err


def test_train_writes_training_curves(synthetic_dataset, tmp_path, capsys):
    data = synthetic_dataset(sizes=[(64, 64)] * 6)
    config = tmp_path / "tiny.yaml"
    config.write_text("base_channels: 4\nimage_size: 64\nprecision: '32'\naccelerator: cpu\ndevices: 1\n")
    run = tmp_path / "run"
    args = ["train", "--config", str(config), "--data", str(data), "--out", str(run), "--epochs", "2"]
    assert main([*args, "--split-sizes", "4,1,1", "--batch-size", "2"]) == 0
    assert "training_curves.png" in capsys.readouterr().out
    width, height = png_size(run / "training_curves.png")
    assert 800 <= width <= 2000 and 250 <= height <= 800


def test_worst_cases_of_a_tta_evaluation_are_drawn_with_tta(tiny_unet, synthetic_dataset, tmp_path, monkeypatch):
    import polypseg.evaluation.reports as reports
    import polypseg.inference.predictor as predictor_module

    data = synthetic_dataset(sizes=[(64, 64)] * 2)
    weights = save_pretrained(tiny_unet, tmp_path / "weights", metadata={"input_size": [64, 64]})
    calls = []
    real = predictor_module.flip_tta
    monkeypatch.setattr(
        predictor_module, "flip_tta", lambda model, images: calls.append(len(images)) or real(model, images)
    )
    names = ["sample_000", "sample_001"]
    reports.plot_worst_cases(weights, data, names, tmp_path / "plain.png")
    assert calls == []
    reports.plot_worst_cases(weights, data, names, tmp_path / "tta.png", tta=True)
    assert calls == [2] and (tmp_path / "tta.png").exists()


@pytest.mark.parametrize(
    "content, named",
    [(b"epoch,val_loss\n0,0.5\n1,abc\n", "column 'val_loss'"), (b"epoch\n0\n\xff\n", "cannot read CSV")],
)
def test_training_curves_name_a_damaged_metrics_csv(tmp_path, content, named):
    metrics = tmp_path / "metrics.csv"
    metrics.write_bytes(content)
    with pytest.raises(InputError, match=named) as caught:
        plot_training_curves(metrics, tmp_path / "curves.png")
    assert caught.value.path == metrics and "\n" not in str(caught.value)
    assert not (tmp_path / "curves.png").exists()
