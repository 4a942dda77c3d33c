"""The web demo: page logic without a browser, and the served page driven by Debian's headless Chromium."""

from __future__ import annotations

import csv
import io
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polypseg.cli import main
from polypseg.data import resize_image
from polypseg.inference import Predictor, predict_files
from polypseg.io import read_image
from polypseg.model import UNet
from polypseg.weights import bundled_examples_dir, save_pretrained

CHROMIUM = Path("/usr/bin/chromium")
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
def balanced_weights(tmp_path, example) -> Path:
    """Untrained weights whose polyp mask covers part of the example (a fresh U-Net calls everything one class).

    The classifier's bias is shifted so that polyp beats background on 30 % of the example's pixels and the
    boundary class never wins; areas and counts then have something to disagree about.
    """
    torch.manual_seed(0)
    model = UNet(base_channels=8).eval()
    pixels = torch.from_numpy(resize_image(read_image(example), (64, 64)).copy()).permute(2, 0, 1)[None] / 255.0
    with torch.no_grad():
        logits = model(pixels)[0]
        model.classifier.bias[1] -= (logits[1] - logits[0]).flatten().quantile(0.7)
        model.classifier.bias[2] = -30.0
    return save_pretrained(model, tmp_path / "weights", metadata={"input_size": [64, 64]})


def test_summary_rounds_like_predictions_csv(balanced_weights, example, tmp_path):
    from polypseg.webdemo import segment_paths, summary_markdown

    predictor = Predictor.from_pretrained(balanced_weights)
    items, errors = segment_paths(predictor, [example, tmp_path / "missing.jpg"])
    assert len(items) == 1 and len(errors) == 1 and "missing.jpg: file not found" in errors[0]
    predict_files(predictor, [example], tmp_path / "out")
    with (tmp_path / "out" / "predictions.csv").open() as handle:
        row = next(csv.DictReader(handle))
    cells = [cell.strip() for cell in summary_markdown(items, errors).splitlines()[2].strip("|").split("|")]
    assert cells[0] == example.name
    assert cells[2] == row["polyp_area_percent"] and cells[3] == row["polyps"] and cells[4] == row["boxes"]
    assert 0 < float(cells[2]) < 100


def test_overlay_shows_the_boxes(balanced_weights, example):
    from polypseg.webdemo import BOX_COLOUR, render_overlay, segment_paths

    (item,), _ = segment_paths(Predictor.from_pretrained(balanced_weights), [example])
    picture = render_overlay(item, opacity=0.4)
    assert picture.shape == item.image.shape
    x_min, y_min, _, _ = item.prediction.polyps[0].box
    assert tuple(picture[y_min, x_min]) == BOX_COLOUR


def test_cli_demo_web_serves_on_localhost_by_default(monkeypatch):
    calls = []
    monkeypatch.setattr("polypseg.webdemo.serve", lambda weights, host, port: calls.append((weights, host, port)))
    assert main(["demo", "--web"]) == 0
    assert main(["demo", "--web", "--weights", "w", "--host", "0.0.0.0", "--port", "8000"]) == 0
    assert calls == [(None, "127.0.0.1", 7860), ("w", "0.0.0.0", 8000)]


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

    predict_files(Predictor.from_pretrained(balanced_weights), [example], tmp_path / "cli")
    with (tmp_path / "cli" / "predictions.csv").open() as handle:
        expected = next(csv.DictReader(handle))
    port = _free_port()
    demo = serve(balanced_weights, host="127.0.0.1", port=port, block=False)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.set_default_timeout(30_000)
                page.goto(f"http://127.0.0.1:{port}/")
                page.locator("#inputs input[type=file]").set_input_files(str(example))
                page.wait_for_function(
                    "name => document.querySelector('#summary').innerText.includes(name)", arg=example.name
                )
                row = next(line for line in page.locator("#summary").inner_text().splitlines() if example.name in line)
                cells = [cell.strip() for cell in row.split("\t")]
                assert cells[2] == expected["polyp_area_percent"] and cells[3] == expected["polyps"]

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
