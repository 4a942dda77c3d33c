"""The web demo: page logic without a browser, and the served page driven by Debian's headless Chromium."""

from __future__ import annotations

import csv
import io
import os
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polypseg.apps.cli import main
from polypseg.images import read_image
from polypseg.inference import Predictor, predict_files
from polypseg.weights import bundled_examples_dir

CHROMIUM = Path("/usr/bin/chromium")
#: An upload name with Markdown and HTML in it (without the characters Gradio strips from upload names).
HOSTILE_NAME = "[x](y) _a_ &amp; ~~b~~ #c www.d.com.jpg"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def example() -> Path:
    return sorted(bundled_examples_dir().glob("*.jpg"))[0]


@pytest.fixture
def balanced_weights(tmp_path, example, partial_polyp_weights) -> Path:
    """Untrained weights whose polyp mask covers 30 % of the example (see conftest.partial_polyp_weights)."""
    return partial_polyp_weights(read_image(example), tmp_path / "weights", 0.3)


def test_summary_rounds_like_predictions_csv(balanced_weights, example, tmp_path):
    from polypseg.apps.webdemo import escape_markdown, segment_paths, summary_markdown

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
    from polypseg.apps.webdemo import BOX_COLOUR, render_overlay, segment_paths

    (item,), _ = segment_paths(Predictor.from_pretrained(balanced_weights, precision="32"), [example])
    picture = render_overlay(item, opacity=0.4)
    assert picture.shape == item.image.shape
    x_min, y_min, _, _ = item.prediction.polyps[0].box
    assert tuple(picture[y_min, x_min]) == BOX_COLOUR


def test_bad_uploads_get_one_line_each_and_the_rest_is_segmented(balanced_weights, example, tmp_path):
    from polypseg.apps.webdemo import segment_paths

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
    from polypseg.apps.webdemo import segment_paths, write_results_zip

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
    from polypseg.apps.webdemo import segment_paths

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
    from polypseg.apps.webdemo import segment_paths, with_min_area

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
    from polypseg.apps.webdemo import LAYERS, Segmented, annotated_view, segment_paths
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
    from polypseg.apps.webdemo import EXAMPLE_DESCRIPTIONS, MAX_DESCRIPTION_CHARS, example_list

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
    from polypseg.apps.webdemo import Segmented, result_caption, summary_markdown

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


def test_host_warning_only_off_loopback():
    from polypseg.apps.webdemo import host_warning

    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert host_warning(host) is None
    for host in ("0.0.0.0", "::", "192.168.1.20", "polyp-lab.example.org"):
        warning = host_warning(host)
        assert warning is not None and host in warning and "no authentication" in warning and "\n" not in warning


def test_cli_demo_web_serves_on_localhost_by_default(monkeypatch):
    from polypseg.apps.webdemo import DEFAULT_MAX_MEGAPIXELS, DEFAULT_MAX_UPLOAD_MB

    calls = []
    monkeypatch.setattr("polypseg.apps.cli_predict.serve", lambda weights, **options: calls.append((weights, options)))
    assert main(["demo", "--web"]) == 0
    assert main(["demo", "--web", "--weights", "w", "--host", "0.0.0.0", "--port", "8000", "--max-upload-mb", "5"]) == 0
    assert main(["demo", "--web", "--max-megapixels", "12.5"]) == 0
    assert main(["demo", "--web", "--tta"]) == 0
    defaults = {
        "max_upload_mb": DEFAULT_MAX_UPLOAD_MB,
        "max_megapixels": DEFAULT_MAX_MEGAPIXELS,
        "tta": False,
        "decoder_concat": None,
        "threshold": None,
    }
    assert main(["demo", "--web", "--decoder-concat", "up-skip", "--threshold", "0.7"]) == 0
    assert calls[-1] == (
        None,
        {"host": "127.0.0.1", "port": 7860, **defaults, "decoder_concat": "up-skip", "threshold": 0.7},
    )
    calls.pop()
    assert calls == [
        (None, {"host": "127.0.0.1", "port": 7860, **defaults}),
        ("w", {"host": "0.0.0.0", "port": 8000, **defaults, "max_upload_mb": 5.0}),
        (None, {"host": "127.0.0.1", "port": 7860, **defaults, "max_megapixels": 12.5}),
        (None, {"host": "127.0.0.1", "port": 7860, **defaults, "tta": True}),
    ]


def test_serve_sets_the_limits_and_warns_off_loopback(monkeypatch, balanced_weights, capsys):
    gradio = pytest.importorskip("gradio")
    from polypseg.apps.webdemo import DEFAULT_QUEUE_SIZE, PAGE_CSS, PAGE_HEAD, serve

    launched = []
    monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **options: launched.append(options))
    demo = serve(balanced_weights, host="0.0.0.0", port=8000, block=False, max_upload_mb=3)
    assert "warning: the web demo listens on 0.0.0.0" in capsys.readouterr().err
    assert launched[0]["server_name"] == "0.0.0.0" and launched[0]["max_file_size"] == 3 * 2**20
    assert launched[0]["css"] == PAGE_CSS and launched[0]["head"] == PAGE_HEAD
    assert demo._queue.max_size == DEFAULT_QUEUE_SIZE
    # Every event that runs the network (upload, file removed, example, TTA) shares one slot.
    segmenting = [fn for fn in demo.fns.values() if fn.api_name in ("segment", "segment_remaining", "example", "tta")]
    assert len(segmenting) == 4 and {(fn.concurrency_limit, fn.concurrency_id) for fn in segmenting} == {(1, "network")}
    serve(balanced_weights, block=False, tta=True)
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="must be positive"):
        serve(balanced_weights, block=False, max_upload_mb=0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


BROWSER = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),  # pandas deprecations inside Gradio
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"Debian's Chromium ({CHROMIUM}) is not installed: apt-get install chromium"
    ),
]
#: Longest wait for one step in the browser (the machine may be busy).
STEP_MS = 90_000


def _launch(playwright):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def _wait_text(page, selector: str, text: str) -> None:
    page.wait_for_function(
        "([selector, text]) => { const node = document.querySelector(selector); "
        "return node !== null && node.innerText.includes(text); }",
        arg=[selector, text],
    )


def _shown_mask_srcs(page) -> list[str]:
    return [img.get_attribute("src") for img in page.locator("#main-result img.mask").all()]


def _browser(test):
    """Marks of the tests that drive Chromium."""
    for mark in BROWSER:
        test = mark(test)
    return test


@_browser
def test_page_in_a_browser(balanced_weights, example, tmp_path):
    """Upload, read the result, change every control, clear, refused upload, example: as a user would."""
    from playwright.sync_api import sync_playwright

    from polypseg.apps.webdemo import LAYERS, example_list, segment_paths, serve, with_min_area

    predictor = Predictor.from_pretrained(balanced_weights, precision="32")
    predict_files(predictor, [example], tmp_path / "cli")
    with (tmp_path / "cli" / "predictions.csv").open() as handle:
        expected = next(csv.DictReader(handle))
    width, height = int(expected["width"]), int(expected["height"])
    # A minimum area that changes the example's count, and the count it gives.
    everything = Predictor.from_pretrained(balanced_weights, precision="32", min_polyp_fraction=0.0)
    (item,), _ = segment_paths(everything, [example])
    candidates = [0.0] + [round(100.0 * (region.pixels + 1) / (width * height), 2) for region in item.prediction.polyps]
    min_area = next(
        area
        for area in candidates
        if area <= 5.0 and len(with_min_area(item, area).prediction.polyps) != int(expected["polyps"])
    )
    recounted = len(with_min_area(item, min_area).prediction.polyps)
    tta_area = str(
        round(
            Predictor.from_pretrained(balanced_weights, precision="32", tta=True)
            .predict(item.image)
            .polyp_area_percent,
            3,
        )
    )
    big = tmp_path / "big.jpg"
    big.write_bytes(example.read_bytes() + bytes(300_000))

    port = _free_port()
    demo = serve(balanced_weights, host="127.0.0.1", port=port, block=False, precision="32", max_upload_mb=0.25)
    try:
        with sync_playwright() as playwright:
            browser = _launch(playwright)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(STEP_MS)
                page.goto(f"http://127.0.0.1:{port}/")
                # The example, and two other images that share a name meant to break Markdown and HTML.
                other_examples = sorted(bundled_examples_dir().glob("*.jpg"))[1:3]
                page.locator("#inputs input[type=file]").set_input_files(
                    [
                        {"name": name, "mimeType": "image/jpeg", "buffer": path.read_bytes()}
                        for name, path in [(example.name, example)] + [(HOSTILE_NAME, path) for path in other_examples]
                    ]
                )
                _wait_text(page, "#summary", example.name)
                rows = [line.split("\t") for line in page.locator("#summary").inner_text().splitlines()]
                cells = next([cell.strip() for cell in row] for row in rows if row[0].strip() == example.name)
                assert cells[2] == expected["polyp_area_percent"] and cells[3] == expected["polyps"]
                assert [row[-1].strip() for row in rows if row[0].strip() == HOSTILE_NAME] == [
                    f"{Path(HOSTILE_NAME).stem}_mask.png",
                    f"{Path(HOSTILE_NAME).stem}-2_mask.png",
                ]
                for block in ("#summary", "#caption"):
                    assert page.locator(f"{block} :is(a, em, del, code, img, h1, h2, li)").count() == 0

                # The main view: the whole image, uncropped, at its own aspect ratio, with a legend of the layers.
                base = page.locator("#main-result img.base-image")
                base.wait_for()
                assert base.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [width, height]
                box = base.bounding_box()
                assert abs(box["width"] / box["height"] - width / height) < 0.01
                assert box["width"] > 400 and box["y"] + box["height"] <= 1200
                assert base.evaluate("img => getComputedStyle(img).objectFit") != "cover"
                assert page.locator("#main-result .legend-item").all_inner_texts() == list(LAYERS)
                _wait_text(page, "#caption", f"Image 1 of 3: {example.name} ({width} x {height} px)")
                assert (
                    f"polyp area {float(expected['polyp_area_percent']):.1f} %" in page.locator("#caption").inner_text()
                )

                # One zip holds the masks, class maps, overlays and predictions.csv with predict's numbers.
                href = page.locator("#download a[download]").first.get_attribute("href")
                archive = zipfile.ZipFile(io.BytesIO(page.request.get(href).body()))
                stems = [example.stem, Path(HOSTILE_NAME).stem, f"{Path(HOSTILE_NAME).stem}-2"]
                assert sorted(archive.namelist()) == sorted(
                    [f"{stem}{suffix}" for stem in stems for suffix in ("_mask.png", "_classes.png", "_overlay.jpg")]
                    + ["predictions.csv"]
                )
                row = next(csv.DictReader(io.StringIO(archive.read("predictions.csv").decode())))
                assert {key: row[key] for key in ("polyp_area_percent", "polyps", "boxes")} == {
                    key: expected[key] for key in ("polyp_area_percent", "polyps", "boxes")
                }
                mask = np.asarray(Image.open(archive.open(f"{example.stem}_mask.png")))
                assert str(round(100.0 * float((mask > 0).mean()), 3)) == expected["polyp_area_percent"]

                # Opacity: the polyp layer is redrawn with that alpha (no network).
                before = _shown_mask_srcs(page)
                number = page.locator("#opacity input[type=number]")
                number.fill("0.9")
                number.press("Enter")
                page.wait_for_function(
                    "src => { const img = document.querySelector('#main-result img.mask'); "
                    "return img !== null && img.src !== src; }",
                    arg=before[0],
                )
                polyp_layer = Image.open(io.BytesIO(page.request.get(_shown_mask_srcs(page)[0]).body()))
                assert abs(int(np.asarray(polyp_layer)[..., 3].max()) - 0.9 * 255) <= 1

                # Minimum area: the count changes in the caption and the table.
                number = page.locator("#min-area input[type=number]")
                number.fill(str(min_area))
                number.press("Enter")
                _wait_text(page, "#caption", f"{recounted} polyp{'s' if recounted != 1 else ''} counted")
                assert f"at least {min_area:g} % of the frame" in page.locator("#caption").inner_text()

                # Show: unchecking a layer removes it from the image and the legend.
                page.locator("#show").get_by_label("polyp", exact=True).uncheck()
                page.wait_for_function("() => document.querySelectorAll('#main-result img.mask').length === 2")
                assert page.locator("#main-result .legend-item").all_inner_texts() == list(LAYERS[1:])

                # The picker shows another result in the main view.
                page.locator("#picker img").nth(1).click()
                _wait_text(page, "#caption", f"Image 2 of 3: {HOSTILE_NAME}")

                # TTA runs the network again: the table reports the TTA area.
                page.locator("#tta input[type=checkbox]").check()
                page.wait_for_function(
                    "([name, area]) => document.querySelector('#summary').innerText.split('\\n')"
                    ".some(line => line.startsWith(name) && line.split('\\t')[2].trim() === area)",
                    arg=[example.name, tta_area],
                )

                # Clearing the upload clears every result.
                page.locator("#inputs button[aria-label='Clear']").click()
                page.wait_for_function("() => document.querySelectorAll('#main-result img').length === 0")
                _wait_text(page, "#summary", "Upload images or click an example.")
                assert page.locator("#download").count() == 0 or not page.locator("#download").is_visible()
                assert page.locator("#caption").inner_text().strip() == ""

                # A new upload that Gradio refuses (over the size limit) leaves no old results beside its error.
                page.locator("#inputs input[type=file]").set_input_files([str(example)])
                base.wait_for()
                page.locator("#inputs input[type=file]").set_input_files([str(big)])
                page.wait_for_function("() => document.querySelectorAll('#main-result img').length === 0")
                _wait_text(
                    page, "#upload-note", f"Not uploaded: {big.name}: over this page's limit of 0.25 MB per file"
                )
                assert page.locator("#inputs .file-preview").count() == 0
                _wait_text(page, "#summary", "Upload images or click an example.")

                # Clicking an example (described in its row) segments it and empties the upload list.
                path, text = example_list()[1]
                page.locator("#examples tbody tr").nth(1).click()
                _wait_text(page, "#summary", path.name)
                assert text in page.locator("#examples").inner_text()
                assert path.name not in page.locator("#inputs").inner_text()
            finally:
                browser.close()
    finally:
        demo.close()


def _small_png(source: Path, target: Path) -> None:
    """A screenshot as a 256-colour PNG (a few hundred KB at most)."""
    Image.open(source).convert("RGB").quantize(colors=256, dither=Image.Dither.NONE).save(target, optimize=True)


@_browser
def test_page_on_a_phone_shows_the_result_in_the_first_screen(tmp_path):
    """A 390x844 viewport: the uploaded image's result is fully visible without scrolling; a desktop one too.

    With ``POLYPSEG_WEBDEMO_SCREENSHOTS=DIR`` the two screenshots (bundled model) are also written there as
    ``webdemo-phone.png`` and ``webdemo-desktop.png`` (``docs/`` holds the ones the README shows).
    """
    from playwright.sync_api import sync_playwright

    from polypseg.apps.webdemo import example_list, serve

    port = _free_port()
    demo = serve(None, host="127.0.0.1", port=port, block=False, precision="32")
    shots = {}
    try:
        with sync_playwright() as playwright:
            browser = _launch(playwright)
            try:
                page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=1)
                page.set_default_timeout(STEP_MS)
                page.goto(f"http://127.0.0.1:{port}/")
                path = example_list()[2][0]
                page.locator("#inputs input[type=file]").set_input_files([str(path)])
                _wait_text(page, "#caption", path.name)
                base = page.locator("#main-result img.base-image")
                page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=base.element_handle())
                assert page.evaluate("window.scrollY") == 0
                box = base.bounding_box()
                legend = page.locator("#main-result .legend").bounding_box()
                assert box["y"] >= 0 and legend["y"] + legend["height"] <= 844 and box["width"] >= 300
                # The table scrolls sideways instead of wrapping cells.
                cell_heights = page.locator("#summary td").evaluate_all("cells => cells.map(c => c.offsetHeight)")
                assert cell_heights and max(cell_heights) < 60
                shots["phone"] = tmp_path / "phone.png"
                page.screenshot(path=shots["phone"])

                page = browser.new_page(viewport={"width": 1280, "height": 820}, device_scale_factor=1)
                page.goto(f"http://127.0.0.1:{port}/")
                page.locator("#examples tbody tr").nth(1).click()
                _wait_text(page, "#caption", example_list()[1][0].name)
                base = page.locator("#main-result img.base-image")
                page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=base.element_handle())
                page.evaluate("window.scrollTo(0, 0)")
                shots["desktop"] = tmp_path / "desktop.png"
                page.screenshot(path=shots["desktop"])
            finally:
                browser.close()
    finally:
        demo.close()
    folder = os.environ.get("POLYPSEG_WEBDEMO_SCREENSHOTS")
    if folder:
        for name, shot in shots.items():
            _small_png(shot, Path(folder) / f"webdemo-{name}.png")
