"""The web demo's page content without Gradio (polypseg.apps.webpage): views, captions, table, zip, examples."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polypseg.apps.webpage import (
    BOX_COLOUR,
    EXAMPLE_DESCRIPTIONS,
    LAYERS,
    MAX_DESCRIPTION_CHARS,
    Segmented,
    annotated_view,
    escape_markdown,
    example_list,
    render_overlay,
    result_caption,
    segment_paths,
    summary_markdown,
    with_min_area,
    write_results_zip,
)
from polypseg.images import read_image
from polypseg.inference import Predictor, predict_files
from polypseg.weights import bundled_examples_dir


def test_summary_rounds_like_predictions_csv(balanced_weights, example, tmp_path):
    predictor = Predictor.from_pretrained(balanced_weights, precision="32")
    items, errors = segment_paths(predictor, [example, tmp_path / "missing.jpg"])
    assert len(items) == 1 and len(errors) == 1 and "missing.jpg: file not found" in errors[0]
    predict_files(predictor, [example], tmp_path / "out")
    with (tmp_path / "out" / "predictions.csv").open() as handle:
        row = next(csv.DictReader(handle))
    cells = [cell.strip() for cell in summary_markdown(items, errors).splitlines()[2].strip("|").split("|")]
    assert cells[0] == escape_markdown(example.name) and cells[5] == escape_markdown(f"{example.stem}_mask.png")
    assert cells[2] == row["polyp_area_percent"] and cells[3] == row["polyps"] and cells[4] == row["boxes"]
    assert 0 < float(cells[2]) < 100


def test_overlay_shows_the_boxes(balanced_weights, example):
    (item,), _ = segment_paths(Predictor.from_pretrained(balanced_weights, precision="32"), [example])
    picture = render_overlay(item, opacity=0.4)
    assert picture.shape == item.image.shape
    x_min, y_min, _, _ = item.prediction.polyps[0].box
    assert tuple(picture[y_min, x_min]) == BOX_COLOUR


def test_bad_uploads_get_one_line_each_and_the_rest_is_segmented(balanced_weights, example, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image\n")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(example.read_bytes()[:2000])
    large = tmp_path / "large.png"
    Image.new("RGB", (1100, 1000)).save(large)
    items, errors = segment_paths(
        Predictor.from_pretrained(balanced_weights, precision="32"),
        [text, truncated, example, large],
        max_pixels=1_000_000,
    )
    assert [item.name for item in items] == [example.name]
    assert [error.split(":")[0] for error in errors] == ["notes.jpg", "truncated.jpg", "large.png"]
    assert all("\n" not in error and "Traceback" not in error for error in errors)
    assert "not an image" in errors[0] and "1,100,000 pixels, over this page's 1,000,000" in errors[2]


def test_uploads_of_one_name_get_their_own_outputs_in_one_zip(balanced_weights, tmp_path):
    first, second, third = (tmp_path / "one" / "a.jpg", tmp_path / "two" / "a.jpg", tmp_path / "a.png")
    examples = sorted(bundled_examples_dir().glob("*.jpg"))
    for path, source in zip((first, second, third), examples, strict=False):
        path.parent.mkdir(exist_ok=True)
        Image.open(source).save(path)
    predictor = Predictor.from_pretrained(balanced_weights, precision="32")
    items, _ = segment_paths(predictor, [first, second, third])
    assert [item.name for item in items] == ["a.jpg", "a.jpg", "a.png"]
    archive = zipfile.ZipFile(write_results_zip(items, tmp_path / "results.zip"))
    stems = ["a", "a-2", "a-3"]
    expected = {f"{stem}{suffix}" for stem in stems for suffix in ("_mask.png", "_classes.png", "_overlay.jpg")}
    assert set(archive.namelist()) == expected | {"predictions.csv"}
    for item, stem in zip(items, stems, strict=True):
        assert np.array_equal(np.asarray(Image.open(archive.open(f"{stem}_mask.png"))) > 0, item.prediction.polyp_mask)
        assert np.array_equal(np.asarray(Image.open(archive.open(f"{stem}_classes.png"))), item.prediction.class_map)
        assert Image.open(archive.open(f"{stem}_overlay.jpg")).size == item.image.shape[1::-1]
    # The CSV has predict's columns and numbers (file: the uploaded name).
    predict_files(predictor, [first], tmp_path / "cli")
    with (tmp_path / "cli" / "predictions.csv").open() as handle:
        cli_row = next(csv.DictReader(handle))
    rows = list(csv.DictReader(io.StringIO(archive.read("predictions.csv").decode())))
    assert [row["file"] for row in rows] == ["a.jpg", "a.jpg", "a.png"]
    assert {key: value for key, value in rows[0].items() if key != "file"} == {
        key: value for key, value in cli_row.items() if key != "file"
    }


def test_files_over_the_per_upload_limit_are_named(balanced_weights, example, tmp_path):
    paths = []
    for index in range(9):
        paths.append(tmp_path / f"image{index}.jpg")
        paths[-1].write_bytes(example.read_bytes())
    predictor = Predictor.from_pretrained(balanced_weights, precision="32")
    items, errors = segment_paths(predictor, paths, max_images=7)
    assert len(items) == 7 and errors == ["image7.jpg, image8.jpg: at most 7 images are segmented per upload"]
    _, errors = segment_paths(predictor, paths, max_images=2)
    assert errors[0].startswith("image2.jpg, image3.jpg, image4.jpg, image5.jpg, image6.jpg and 2 more: at most 2")


def test_min_area_counts_as_the_predictor_does(balanced_weights, example):
    """The page keeps every region and applies the minimum itself; counts and boxes equal the predictor's."""
    everything = Predictor.from_pretrained(balanced_weights, precision="32", min_polyp_fraction=0.0)
    (item,), _ = segment_paths(everything, [example])
    sizes = sorted({region.pixels for region in item.prediction.polyps})
    assert len(sizes) > 1, "the test needs regions of several sizes"
    pixels = item.image.shape[0] * item.image.shape[1]
    for percent in [0.0, 0.1, 100.0 * sizes[0] / pixels, 100.0 * (sizes[-1] + 1) / pixels, 1.0]:
        expected = Predictor.from_pretrained(balanced_weights, precision="32", min_polyp_fraction=percent / 100.0)
        counted = with_min_area(item, percent).prediction
        assert counted.polyps == expected.predict(item.image).polyps
        assert np.array_equal(counted.class_map, item.prediction.class_map)


def test_annotated_view_layers_and_size(balanced_weights, example):
    from polypseg.classes import BOUNDARY, POLYP

    (item,), _ = segment_paths(Predictor.from_pretrained(balanced_weights, precision="32"), [example])
    image, layers = annotated_view(item, opacity=0.7)
    assert image is item.image and [name for _, name in layers] == list(LAYERS)
    polyp, boundary, boxes = (mask for mask, _ in layers)
    assert np.array_equal(polyp, (item.prediction.class_map == POLYP) * 0.7)
    assert np.array_equal(boundary > 0, item.prediction.class_map == BOUNDARY)
    x_min, y_min, x_max, y_max = item.prediction.polyps[0].box
    assert boxes[y_min, x_min] == boxes[y_max - 1, x_max - 1] == 1.0 and boxes.max() == 1.0
    _, shown = annotated_view(item, opacity=0.7, show=["boundary"])
    assert [name for _, name in shown] == ["boundary"]
    # A large image is shown scaled down with its aspect ratio; every layer has the shown size.
    big = Segmented("big.png", np.zeros((1000, 3000, 3), np.uint8), item.prediction, "big")
    big.prediction = type(item.prediction)(np.zeros((1000, 3000), np.uint8), [])
    image, layers = annotated_view(big, opacity=0.4, max_side=600)
    assert image.shape == (200, 600, 3) and all(mask.shape == (200, 600) for mask, _ in layers)


def test_bundled_examples_are_described_in_one_line_each():
    described = example_list()
    assert sorted(path.name for path, _ in described) == sorted(p.name for p in bundled_examples_dir().glob("*.jpg"))
    assert [path.name for path, _ in described] == list(EXAMPLE_DESCRIPTIONS)
    for (_, text), percentile in zip(described, (10, 30, 50, 70, 90), strict=True):
        assert f"({percentile}th percentile)" in text and len(text) <= MAX_DESCRIPTION_CHARS and "\n" not in text
    assert example_list([Path("x/own.jpg")]) == [(Path("x/own.jpg"), "own.jpg")]


def test_file_names_cannot_inject_markdown_or_html(balanced_weights, example):
    """A hostile name renders as exactly itself, in its own cell (checked with a CommonMark renderer)."""
    from html.parser import HTMLParser

    markdown_it = pytest.importorskip("markdown_it")
    name = "a|b *c* _d_ [e](f) <b>g</b> <script>h</script> &amp; `i` ~~j~~ $$k$$ \\l\nm.jpg"
    prediction = Predictor.from_pretrained(balanced_weights, precision="32").predict(read_image(example))
    item = Segmented(name, np.zeros((2, 3, 3), np.uint8), prediction, "stem")
    rendered = (
        markdown_it.MarkdownIt("commonmark")
        .enable(["table", "strikethrough"])
        .render(summary_markdown([item], [f"{name}: not an image"]))
    )

    class Text(HTMLParser):
        """The text of each table cell and paragraph, and every tag used."""

        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.blocks: list[str] = []
            self.tags: set[str] = set()

        def handle_starttag(self, tag: str, attrs: list) -> None:
            self.tags.add(tag)
            if tag in ("td", "p"):
                self.blocks.append("")

        def handle_data(self, data: str) -> None:
            if self.blocks:
                self.blocks[-1] += data

    parsed = Text()
    parsed.feed(rendered)
    shown = name.replace("\n", "\\n")
    blocks = [block.strip() for block in parsed.blocks]
    assert blocks == [
        shown,
        "3 x 2",
        *blocks[2:5],
        "stem_mask.png",
        f"Not segmented: {shown}: not an image",
    ]
    assert parsed.tags <= {"table", "thead", "tbody", "tr", "th", "td", "p", "strong"}
    caption = Text()
    caption.feed(markdown_it.MarkdownIt("commonmark").render(result_caption(item, 0.1)))
    assert caption.tags <= {"p", "strong"} and caption.blocks[0].startswith(f"{shown} (3 x 2 px)")
