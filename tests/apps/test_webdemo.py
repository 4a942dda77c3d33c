"""The web demo's Gradio page (polypseg.apps.webdemo): serving, limits, and the page driven by headless Chromium."""

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
    from polypseg.apps.webdemo import DEFAULT_QUEUE_SIZE, serve
    from polypseg.apps.webpage import PAGE_CSS, PAGE_HEAD

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

    from polypseg.apps.webdemo import serve
    from polypseg.apps.webpage import LAYERS, example_list, segment_paths, with_min_area

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

    from polypseg.apps.webdemo import serve
    from polypseg.apps.webpage import example_list

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
