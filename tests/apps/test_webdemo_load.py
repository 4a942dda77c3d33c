"""The served web demo under load and with bad uploads, through Gradio's own API client.

One server (127.0.0.1, a free port, an untrained width-8 U-Net at 64x64) serves the whole module. Every
request has a timeout and the server is closed at the end, so the tests stop on their own even when the
server hangs.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polypseg.images import read_image
from polypseg.inference import Predictor
from polypseg.weights import bundled_examples_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),  # pandas deprecations inside Gradio
]

#: Concurrent requests of the load test.
REQUESTS = 20
#: Seconds any one wait may take; the whole module stays well under a minute.
TIMEOUT_S = 40
#: Limits of the server under test: the examples (18-52 KB, about 0.3 MP) pass, test files exceed them.
MAX_UPLOAD_MB = 0.25
MAX_MEGAPIXELS = 1.0


@pytest.fixture(scope="module")
def examples() -> list[Path]:
    return sorted(bundled_examples_dir().glob("*.jpg"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory, examples, partial_polyp_weights) -> Path:
    """Untrained weights whose polyp mask covers about 30 % of the first example (as in test_webdemo.py)."""
    return partial_polyp_weights(read_image(examples[0]), tmp_path_factory.mktemp("weights"), 0.3)


@pytest.fixture(scope="module")
def expected_areas(weights, examples) -> dict[str, str]:
    """Polyp area (%) per example as the library computes it, rounded as the page shows it."""
    predictor = Predictor.from_pretrained(weights, precision="32")
    return {path.name: str(round(predictor.predict(read_image(path)).polyp_area_percent, 3)) for path in examples}


class NetworkCalls:
    """Counts the predictor's network calls that run at the same time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.calls = 0

    def wrap(self, predict_batch):
        def counted(predictor: Predictor, images):
            with self.lock:
                self.running += 1
                self.calls += 1
                self.peak = max(self.peak, self.running)
            try:
                return predict_batch(predictor, images)
            finally:
                with self.lock:
                    self.running -= 1

        return counted


@pytest.fixture(scope="module")
def network_calls() -> Iterator[NetworkCalls]:
    calls = NetworkCalls()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Predictor, "predict_batch", calls.wrap(Predictor.predict_batch))
        yield calls


@pytest.fixture(scope="module")
def server(weights, network_calls) -> Iterator[str]:
    from polypseg.apps.webdemo import serve

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = serve(
        weights,
        host="127.0.0.1",
        port=port,
        block=False,
        max_upload_mb=MAX_UPLOAD_MB,
        max_megapixels=MAX_MEGAPIXELS,
        precision="32",
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    client = Client(server, verbose=False, download_files=False, analytics_enabled=False, httpx_kwargs={"timeout": 30})
    yield client
    client.close()


def _segment(client, paths: list[Path]):
    from gradio_client import handle_file

    # Inputs: files, opacity, minimum polyp area (%), TTA, layers shown; outputs: main view, caption, picker,
    # table, zip.
    files = [handle_file(str(path)) for path in paths]
    return client.submit(files, 0.4, 0.1, False, ["polyp", "boundary", "counted polyp box"], api_name="/segment")


def _rows(summary: str) -> dict[str, list[str]]:
    """Table rows of the page's summary, by image name, cells unescaped."""
    rows = {}
    for line in summary.splitlines():
        if line.startswith("| ") and not line.startswith("| image "):
            cells = [re.sub(r"\\(.)", r"\1", cell.strip()) for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows[cells[0]] = cells
    return rows


def test_twenty_concurrent_requests_all_answered_correctly(client, examples, expected_areas, network_calls):
    jobs = [_segment(client, [examples[index % len(examples)]]) for index in range(REQUESTS)]
    deadline = time.monotonic() + TIMEOUT_S
    try:
        results = [job.result(timeout=max(0.0, deadline - time.monotonic())) for job in jobs]
    except futures.TimeoutError:
        unanswered = sum(not job.done() for job in jobs)
        for job in jobs:
            job.cancel()
        pytest.fail(f"{unanswered} of {REQUESTS} requests unanswered after {TIMEOUT_S} s")
    for index, (main, caption, _, summary, archive) in enumerate(results):
        name = examples[index % len(examples)].name
        rows = _rows(summary)
        # The caption escapes Markdown punctuation (a backslash before the name's dot), as the table cells do.
        assert list(rows) == [name] and "Not segmented" not in summary and name in re.sub(r"\\(.)", r"\1", caption)
        assert rows[name][2] == expected_areas[name]
        assert main is not None and len(main["annotations"]) == 3 and archive is not None
    assert network_calls.calls >= REQUESTS and network_calls.peak == 1


def test_non_images_get_one_line_each_and_the_image_beside_them_is_segmented(
    client, examples, expected_areas, tmp_path
):
    text = tmp_path / "notes.jpg"
    text.write_text("a text file, not an image\n")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(examples[1].read_bytes()[:3000])
    large = tmp_path / "large.png"
    Image.fromarray(np.zeros((1000, 1100, 3), np.uint8)).save(large)  # 1.1 MP, a few KB
    main, _, _, summary, archive = _segment(client, [text, examples[1], truncated, large]).result(timeout=TIMEOUT_S)

    assert list(_rows(summary)) == [examples[1].name]
    assert _rows(summary)[examples[1].name][2] == expected_areas[examples[1].name]
    assert main is not None and archive is not None
    errors = [line for line in summary.splitlines() if line.startswith("**Not segmented:**")]
    assert [re.sub(r"\\(.)", r"\1", line).split()[2] for line in errors] == [
        "notes.jpg:",
        "truncated.jpg:",
        "large.png:",
    ]
    assert "not an image" in errors[0] and "truncated" in errors[1] and "over this page" in errors[2]
    assert "Traceback" not in summary


def test_over_size_upload_is_refused(server, client, examples, tmp_path):
    import httpx

    big = tmp_path / "big.jpg"
    big.write_bytes(examples[0].read_bytes() + bytes(int(MAX_UPLOAD_MB * 2**20)))
    with httpx.Client(timeout=TIMEOUT_S) as http:
        refused = http.post(f"{server}gradio_api/upload", files=[("files", (big.name, big.read_bytes()))])
        accepted = http.post(
            f"{server}gradio_api/upload", files=[("files", (examples[0].name, examples[0].read_bytes()))]
        )
    assert refused.status_code == 413 and "maximum allowed size" in refused.text
    assert accepted.status_code == 200
    # Gradio's client reads the limit from the page's configuration and refuses before uploading.
    with pytest.raises(ValueError, match=f"exceeds the maximum file size of {int(MAX_UPLOAD_MB * 2**20)} bytes"):
        _segment(client, [big]).result(timeout=TIMEOUT_S)
