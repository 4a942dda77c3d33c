"""``predict_files`` (``polypseg.inference.streaming``): outputs at the input size, CSV, bad files, no silent
overwrite, hostile names and folders."""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polypseg.inference import predict_files

pytestmark = pytest.mark.precision  # run under both POLYPSEG_NATIVE_BF16 settings by make test


def read_csv(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_files_writes_outputs_at_input_size(predictor, synthetic_dataset, tmp_path):
    data = synthetic_dataset()
    out = tmp_path / "out"
    summary = predict_files(predictor, [data / "images"], out, batch_size=3)
    assert summary.ok and len(summary.rows) == 4
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 4
    for row in rows:
        stem = row["file"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
        with Image.open(row["file"]) as source:
            size = source.size
        for suffix in ("_classes.png", "_mask.png", "_overlay.jpg"):
            with Image.open(out / f"{stem}{suffix}") as written:
                assert written.size == size
        with Image.open(out / f"{stem}_classes.png") as classes:
            assert classes.mode == "P"
        with Image.open(out / f"{stem}_mask.png") as mask:
            values = set(np.unique(np.asarray(mask)))
            assert values <= {0, 255}
            area = 100 * (np.asarray(mask) > 0).mean()
        assert float(row["polyp_area_percent"]) == pytest.approx(area, abs=1e-3)
        assert (int(row["width"]), int(row["height"])) == size
        assert len(json.loads(row["boxes"])) == int(row["polyps"])
    assert not list(out.glob(".*tmp"))


def test_bad_file_is_reported_and_the_rest_done(predictor, synthetic_dataset, tmp_path):
    data = synthetic_dataset()
    bad = data / "images" / "broken.jpg"
    bad.write_text("this is not a JPEG")
    out = tmp_path / "out"
    seen = []
    summary = predict_files(
        predictor,
        [data / "images", tmp_path / "missing.png"],
        out,
        on_result=lambda path, prediction, error: seen.append(error),
    )
    assert len(summary.rows) == 4
    assert not summary.ok and len(summary.errors) == 2
    assert any("broken.jpg" in e and "\n" not in e for e in summary.errors)
    assert any("missing.png" in e for e in summary.errors)
    assert not (out / "broken_mask.png").exists()
    assert len(read_csv(out / "predictions.csv")) == 4
    assert seen.count(None) == 4


def test_outputs_are_not_overwritten_without_permission(predictor, synthetic_dataset, tmp_path):
    data = synthetic_dataset()
    out = tmp_path / "out"
    predict_files(predictor, [data / "images"], out)
    before = (out / "predictions.csv").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        predict_files(predictor, [data / "images"], out)
    assert (out / "predictions.csv").read_bytes() == before
    # Without the CSV, the per-image outputs are still protected.
    (out / "predictions.csv").unlink()
    summary = predict_files(predictor, [data / "images" / "sample_000.jpg"], out)
    assert not summary.ok and "exists" in summary.errors[0]
    summary = predict_files(predictor, [data / "images"], out, overwrite=True)
    assert summary.ok and len(summary.rows) == 4


def test_same_stem_in_two_folders_gets_distinct_outputs(predictor, write_image, tmp_path):
    write_image(tmp_path / "a" / "x.jpg", size=(40, 30))
    write_image(tmp_path / "b" / "x.jpg", size=(50, 30))
    out = tmp_path / "out"
    summary = predict_files(predictor, [tmp_path / "a", tmp_path / "b"], out)
    assert summary.ok
    assert (out / "x_mask.png").exists() and (out / "x-2_mask.png").exists()


# --------------------------------------------------------------------------------------------------
# Hostile testing, issue 10 section 3: output names, the output folder as input, the same file twice,
# stale temporaries, permissions, numbers out of range.


def test_a_renamed_stem_never_takes_another_inputs_outputs(predictor, write_image, tmp_path):
    """Finding 4: a/same.jpg, a/same-2.jpg and b/same.jpg give three output sets, each of its own image."""
    sizes = {"a/same.jpg": (40, 30), "a/same-2.jpg": (50, 30), "b/same.jpg": (60, 30)}
    for name, size in sizes.items():
        write_image(tmp_path / name, size=size)
    out = tmp_path / "out"
    summary = predict_files(predictor, [tmp_path / "a", tmp_path / "b"], out)
    assert summary.ok, summary.errors
    assert len(list(out.glob("*_mask.png"))) == 3
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 3 and len({row["stem"] for row in rows}) == 3
    for row in rows:
        name = str(Path(row["file"]).relative_to(tmp_path).as_posix())
        for suffix in ("_classes.png", "_mask.png", "_overlay.jpg"):
            with Image.open(out / f"{row['stem']}{suffix}") as written:
                assert written.size == sizes[name], (name, suffix)


def test_the_output_folder_is_not_read_as_input(predictor, synthetic_dataset, tmp_path):
    """Finding 5: predict nest --out nest/pred, then again with overwrite: earlier outputs are not inputs."""
    nest = synthetic_dataset(sizes=[(40, 30)] * 2) / "images"
    out = nest / "pred"
    for _ in range(2):
        summary = predict_files(predictor, [nest], out, overwrite=True)
        assert summary.ok, summary.errors
        assert [Path(row["file"]).name for row in summary.rows] == ["sample_000.jpg", "sample_001.jpg"]
    assert not list(out.glob("*_mask_*"))
    assert sorted(p.name for p in out.glob("*_mask.png")) == ["sample_000_mask.png", "sample_001_mask.png"]
    # The output folder or a file in it, named as an input: reported, not segmented.
    for given in (out, out / "sample_000_mask.png", str(out / "*.png")):
        summary = predict_files(predictor, [given], out, overwrite=True)
        assert not summary.rows and len(summary.errors) == 1 and "output folder" in summary.errors[0], given


def test_one_file_given_three_ways_is_segmented_once(predictor, write_image, tmp_path, monkeypatch):
    """Finding 15: relative, absolute and x/../x names of one file give one row and one output set."""
    write_image(tmp_path / "x" / "img.jpg", size=(40, 30))
    monkeypatch.chdir(tmp_path)
    given = ["x/img.jpg", str(tmp_path / "x" / "img.jpg"), "x/../x/img.jpg", "x"]
    summary = predict_files(predictor, given, tmp_path / "out")
    assert summary.ok and [row["file"] for row in summary.rows] == ["x/img.jpg"]
    assert [p.name for p in (tmp_path / "out").glob("*_mask.png")] == ["img_mask.png"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_outputs_have_the_usual_permissions(predictor, synthetic_dataset, tmp_path):
    """Finding 13: outputs follow the umask (0644 under 022), not mkstemp's 0600."""
    previous = os.umask(0o022)
    try:
        predict_files(predictor, [synthetic_dataset(sizes=[(40, 30)]) / "images"], tmp_path / "out")
    finally:
        os.umask(previous)
    written = list((tmp_path / "out").iterdir())
    assert len(written) == 4 and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in written), written
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755


def test_predict_removes_stale_temporaries_of_ours_only(predictor, synthetic_dataset, tmp_path):
    """Finding 13: what a killed run left in --out (our pattern, no live writer) goes; the user's files stay."""
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".polypseg-tmp-0123456789abcdef.sample_000_mask.png.tmp"
    stale.write_bytes(b"half")
    users = [".notes.tmp", ".sample_000_mask.png.abc12345.tmp", "draft.tmp"]
    for name in users:
        (out / name).write_text("the user's")
    summary = predict_files(predictor, [synthetic_dataset(sizes=[(40, 30)]) / "images"], out)
    assert summary.ok and not stale.exists()
    assert all((out / name).exists() for name in users)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"batch_size": -3}, "batch size"),
        ({"batch_size": 0}, "batch size"),
        ({"batch_size": 2.5}, "batch size"),
        ({"opacity": 5.0}, "opacity"),
        ({"opacity": float("nan")}, "opacity"),
        ({"opacity": -0.1}, "opacity"),
    ],
)
def test_predict_files_refuses_numbers_out_of_range_before_writing(predictor, write_image, tmp_path, options, match):
    """Finding 12: a clear ValueError and nothing written, not an IndexError after partial outputs."""
    write_image(tmp_path / "in" / "a.jpg", size=(40, 30))
    with pytest.raises(ValueError, match=match):
        predict_files(predictor, [tmp_path / "in"], tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()
