"""The web demo: page logic without a browser, and the served page driven by Debian's headless Chromium."""

from __future__ import annotations

import csv
import io
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polypseg.cli import main
from polypseg.inference import Predictor, predict_files
from polypseg.io import read_image
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
    from polypseg.webdemo import escape_markdown, segment_paths, summary_markdown

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
    from polypseg.webdemo import BOX_COLOUR, render_overlay, segment_paths

    (item,), _ = segment_paths(Predictor.from_pretrained(balanced_weights, precision="32"), [example])
    picture = render_overlay(item, opacity=0.4)
    assert picture.shape == item.image.shape
    x_min, y_min, _, _ = item.prediction.polyps[0].box
    assert tuple(picture[y_min, x_min]) == BOX_COLOUR


def test_bad_uploads_get_one_line_each_and_the_rest_is_segmented(balanced_weights, example, tmp_path):
    from polypseg.webdemo import segment_paths

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


def test_uploads_of_one_name_get_their_own_masks(balanced_weights, tmp_path):
    from polypseg.webdemo import _write_masks, segment_paths

    first, second, third = (tmp_path / "one" / "a.jpg", tmp_path / "two" / "a.jpg", tmp_path / "a.png")
    examples = sorted(bundled_examples_dir().glob("*.jpg"))
    for path, source in zip((first, second, third), examples, strict=False):
        path.parent.mkdir(exist_ok=True)
        Image.open(source).save(path)
    items, _ = segment_paths(Predictor.from_pretrained(balanced_weights, precision="32"), [first, second, third])
    assert [item.name for item in items] == ["a.jpg", "a.jpg", "a.png"]
    masks = [Path(path) for path in _write_masks(items, tmp_path / "masks")]
    assert [path.name for path in masks] == ["a_mask.png", "a-2_mask.png", "a-3_mask.png"]
    for item, path in zip(items, masks, strict=True):
        assert np.array_equal(np.asarray(Image.open(path)) > 0, item.prediction.polyp_mask)


def test_file_names_cannot_inject_markdown_or_html(balanced_weights, example):
    """A hostile name renders as exactly itself, in its own cell (checked with a CommonMark renderer)."""
    from html.parser import HTMLParser

    markdown_it = pytest.importorskip("markdown_it")
    from polypseg.webdemo import Segmented, summary_markdown

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


def test_host_warning_only_off_loopback():
    from polypseg.webdemo import host_warning

    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert host_warning(host) is None
    for host in ("0.0.0.0", "::", "192.168.1.20", "polyp-lab.example.org"):
        warning = host_warning(host)
        assert warning is not None and host in warning and "no authentication" in warning and "\n" not in warning


def test_cli_demo_web_serves_on_localhost_by_default(monkeypatch):
    from polypseg.webdemo import DEFAULT_MAX_MEGAPIXELS, DEFAULT_MAX_UPLOAD_MB

    calls = []
    monkeypatch.setattr("polypseg.webdemo.serve", lambda weights, **options: calls.append((weights, options)))
    assert main(["demo", "--web"]) == 0
    assert main(["demo", "--web", "--weights", "w", "--host", "0.0.0.0", "--port", "8000", "--max-upload-mb", "5"]) == 0
    assert main(["demo", "--web", "--max-megapixels", "12.5"]) == 0
    defaults = {"max_upload_mb": DEFAULT_MAX_UPLOAD_MB, "max_megapixels": DEFAULT_MAX_MEGAPIXELS}
    assert calls == [
        (None, {"host": "127.0.0.1", "port": 7860, **defaults}),
        ("w", {"host": "0.0.0.0", "port": 8000, **defaults, "max_upload_mb": 5.0}),
        (None, {"host": "127.0.0.1", "port": 7860, **defaults, "max_megapixels": 12.5}),
    ]


def test_serve_sets_the_limits_and_warns_off_loopback(monkeypatch, balanced_weights, capsys):
    gradio = pytest.importorskip("gradio")
    from polypseg.webdemo import DEFAULT_QUEUE_SIZE, serve

    launched = []
    monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **options: launched.append(options))
    demo = serve(balanced_weights, host="0.0.0.0", port=8000, block=False, max_upload_mb=3)
    assert "warning: the web demo listens on 0.0.0.0" in capsys.readouterr().err
    assert launched[0]["server_name"] == "0.0.0.0" and launched[0]["max_file_size"] == 3 * 2**20
    assert demo._queue.max_size == DEFAULT_QUEUE_SIZE
    segmenting = [fn for fn in demo.fns.values() if fn.api_name in ("segment", "example")]
    assert len(segmenting) == 2 and {(fn.concurrency_limit, fn.concurrency_id) for fn in segmenting} == {(1, "network")}
    serve(balanced_weights, block=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="must be positive"):
        serve(balanced_weights, block=False, max_upload_mb=0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # pandas deprecations inside Gradio
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"Debian's Chromium ({CHROMIUM}) is not installed: apt-get install chromium"
)
def test_page_in_a_browser_reports_what_predict_reports(balanced_weights, example, tmp_path):
    from playwright.sync_api import sync_playwright

    from polypseg.webdemo import serve

    predict_files(Predictor.from_pretrained(balanced_weights, precision="32"), [example], tmp_path / "cli")
    with (tmp_path / "cli" / "predictions.csv").open() as handle:
        expected = next(csv.DictReader(handle))
    port = _free_port()
    demo = serve(balanced_weights, host="127.0.0.1", port=port, block=False, precision="32")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.set_default_timeout(30_000)
                page.goto(f"http://127.0.0.1:{port}/")
                # The example, and two other images that share a name meant to break Markdown and HTML.
                other_examples = sorted(bundled_examples_dir().glob("*.jpg"))[1:3]
                page.locator("#inputs input[type=file]").set_input_files(
                    [
                        {"name": name, "mimeType": "image/jpeg", "buffer": path.read_bytes()}
                        for name, path in [(example.name, example)] + [(HOSTILE_NAME, path) for path in other_examples]
                    ]
                )
                page.wait_for_function(
                    "name => document.querySelector('#summary').innerText.includes(name)", arg=example.name
                )
                rows = [line.split("\t") for line in page.locator("#summary").inner_text().splitlines()]
                cells = next([cell.strip() for cell in row] for row in rows if row[0].strip() == example.name)
                assert cells[2] == expected["polyp_area_percent"] and cells[3] == expected["polyps"]
                assert [row[-1].strip() for row in rows if row[0].strip() == HOSTILE_NAME] == [
                    f"{Path(HOSTILE_NAME).stem}_mask.png",
                    f"{Path(HOSTILE_NAME).stem}-2_mask.png",
                ]
                assert page.locator("#summary :is(a, em, del, code, img, h1, h2, li)").count() == 0
                downloads = [link.get_attribute("download") for link in page.locator("#masks a[download]").all()]
                assert len(set(downloads)) == 3

                # The overlay is shown, at the image's own size.
                overlay_img = page.locator("#overlays img").first
                overlay_img.wait_for()
                first_src = overlay_img.get_attribute("src")
                overlay_png = Image.open(io.BytesIO(page.request.get(first_src).body()))
                assert overlay_png.size == (int(expected["width"]), int(expected["height"]))

                # The downloadable mask is the binary mask whose area the table reports.
                href = page.locator("#masks a[download]").first.get_attribute("href")
                mask = np.asarray(Image.open(io.BytesIO(page.request.get(href).body())))
                assert set(np.unique(mask)) <= {0, 255}
                assert str(round(100.0 * float((mask > 0).mean()), 3)) == expected["polyp_area_percent"]

                # Moving the opacity slider re-renders the overlay.
                number = page.locator("#opacity input[type=number]")
                number.fill("0.9")
                number.press("Enter")
                page.wait_for_function(
                    "src => { const img = document.querySelector('#overlays img'); return img && img.src !== src; }",
                    arg=first_src,
                )

                # Clicking a bundled example segments it.
                other = sorted(bundled_examples_dir().glob("*.jpg"))[1].name
                page.locator("#examples img").nth(1).click()
                page.wait_for_function("name => document.querySelector('#summary').innerText.includes(name)", arg=other)
            finally:
                browser.close()
    finally:
        demo.close()
