"""``polypseg demo --web``: a Gradio page to segment images in the browser.

Upload one or more images (or click a bundled example, each described in one line) and see the shown
image uncropped with the segmentation as an annotated overlay (polyp, boundary and the boxes of counted
polyps, each a layer with a colour swatch in the legend and a "Show" toggle), one line of numbers under
it, a table with a row per image, a short note on how to read them, and one zip of every output (binary
masks, class maps, overlays, ``predictions.csv``). Controls: overlay opacity, minimum polyp area (regions
smaller than this share of the frame are not counted) and flip TTA. Opacity, minimum area and the toggles
re-render from the kept class maps without running the network; TTA runs it again. Results clear as soon
as the input changes. One :class:`~polypseg.inference.Predictor` is loaded at start and serves every
request. The layout reads top to bottom on a phone: upload, result, numbers, then examples and controls.

Uploads are untrusted: each file is limited in bytes (Gradio refuses larger uploads) and, judged from its
header before decoding, in pixels (lower than the CLI's limit, since logits are computed at full
resolution); a file that is not a readable image gets one line in the page and the others are still
segmented; file names are escaped before they reach the Markdown. Requests wait in a bounded queue and the
network runs for one request at a time. The page listens on 127.0.0.1 unless told otherwise, and
:func:`serve` warns when it is not.

Gradio is the optional ``demo`` extra (``pip install 'polypseg[demo]'``); it is imported only here. This
module keeps annotations evaluated (no ``from __future__ import annotations``): Gradio reads the
``gr.SelectData`` annotation of the result picker's handler at run time to pass it the clicked image.
"""

import copy
import ipaddress
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polypseg.apps.webpage import (
    DEFAULT_OPACITY,
    HOW_TO_READ,
    LAYER_COLOURS,
    LAYERS,
    MAX_MIN_AREA_PERCENT,
    PAGE_CSS,
    PAGE_HEAD,
    ZIP_NAME,
    Segmented,
    annotated_view,
    example_list,
    result_caption,
    segment_paths,
    summary_markdown,
    thumbnail,
    with_min_area,
    write_results_zip,
)
from polypseg.errors import UsageError
from polypseg.extras import require
from polypseg.images import IMAGE_SUFFIXES
from polypseg.inference import Predictor
from polypseg.weights import bundled_examples_dir

if TYPE_CHECKING:
    import gradio as gr

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_MEGAPIXELS",
    "DEFAULT_MAX_UPLOAD_MB",
    "DEFAULT_PORT",
    "DEFAULT_QUEUE_SIZE",
    "MAX_IMAGES_PER_REQUEST",
    "build_demo",
    "host_warning",
    "serve",
]


#: Where the page listens by default: this machine only (see :func:`host_warning`).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
#: Largest upload Gradio accepts, per file, in MB (2**20 bytes).
DEFAULT_MAX_UPLOAD_MB = 20.0
#: Largest image the page segments, in millions of pixels: its logits (3 float32 per pixel) are computed at
#: full resolution, 480 MB at 40 MP, so the page refuses earlier than the CLI's 100 MP.
DEFAULT_MAX_MEGAPIXELS = 40.0
#: Images segmented per request; further files get a line naming them (memory per request stays bounded).
MAX_IMAGES_PER_REQUEST = 16
#: Requests that may wait for the network; further ones are told the queue is full.
DEFAULT_QUEUE_SIZE = 32


def _import_gradio() -> Any:
    return require("gradio", "the web demo")


def build_demo(
    predictor: Predictor,
    examples: Sequence[Path] | None = None,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    tta: bool | None = None,
) -> "gr.Blocks":
    """The Gradio page around a loaded predictor (not launched), with its queue.

    Segmenting (an upload, an example click, the TTA toggle) runs for one request at a time, in Gradio's
    queue of at most ``queue_size`` waiting requests; re-rendering for the opacity, minimum-area and
    layer controls runs beside it without the network. :func:`serve` adds :data:`PAGE_CSS` and
    :data:`PAGE_HEAD` at launch.

    Args:
        predictor: The loaded model, shared by every request; its ``min_polyp_fraction`` is the page's
            default minimum polyp area.
        examples: Example images offered for one click (default: the bundled examples, described).
        max_megapixels: Larger uploaded images are refused (one line in the page) before decoding.
        queue_size: Requests that may wait; further ones are refused with "queue is full".
        tta: Default of the page's TTA control (default: the predictor's ``tta``).
    """
    gr = _import_gradio()

    described = example_list(examples)
    # Two views of one loaded network: every region is kept (the page applies the minimum area itself),
    # with and without flip TTA.
    plain = copy.copy(predictor)
    plain.min_polyp_fraction, plain.tta = 0.0, False
    flipped = copy.copy(plain)
    flipped.tta = True
    default_min_area = round(100.0 * predictor.min_polyp_fraction, 3)
    # Zips offered for download; Gradio copies them into its own cache, this folder goes at exit.
    zip_root = tempfile.TemporaryDirectory(prefix="polypseg-demo-")
    max_pixels = int(max_megapixels * 1_000_000)

    def cleared() -> tuple[Any, ...]:
        return (
            None,
            "",
            gr.update(value=None, visible=False),
            summary_markdown([]),
            gr.update(value=None, visible=False),
            [],
            0,
        )

    def present(
        kept: list[Segmented], errors: Sequence[str], opacity: float, min_area: float, show: list[str], selected: int
    ) -> tuple[Any, ...]:
        """Every output for kept results: main view, caption, picker, table, zip, state."""
        if not kept:
            cleared_outputs = cleared()
            return (*cleared_outputs[:3], summary_markdown([], errors), *cleared_outputs[4:])
        items = [with_min_area(item, min_area) for item in kept]
        selected = min(max(selected, 0), len(items) - 1)
        archive = write_results_zip(items, Path(tempfile.mkdtemp(dir=zip_root.name)) / ZIP_NAME, opacity)
        return (
            annotated_view(items[selected], opacity, show),
            result_caption(items[selected], min_area, selected, len(items)),
            gr.update(value=[thumbnail(item, opacity) for item in items], visible=len(items) > 1),
            summary_markdown(items, errors),
            gr.update(value=str(archive), visible=True),
            kept,
            selected,
        )

    def segment(paths: Sequence[str], opacity: float, min_area: float, use_tta: bool, show: list[str]) -> tuple:
        kept, errors = segment_paths(
            flipped if use_tta else plain, paths, max_pixels=max_pixels, max_images=MAX_IMAGES_PER_REQUEST
        )
        return present(kept, errors, opacity, min_area, show, 0)

    def on_upload(files: list[str] | None, opacity: float, min_area: float, use_tta: bool, show: list[str]) -> tuple:
        return segment(files or [], opacity, min_area, use_tta, show)

    def on_example(index: int, opacity: float, min_area: float, use_tta: bool, show: list[str]) -> tuple:
        return (None, *segment([str(described[index][0])], opacity, min_area, use_tta, show))

    def on_tta(kept: list[Segmented], opacity: float, min_area: float, use_tta: bool, show: list[str], selected: int):
        images = [item.image for item in kept]
        predictions = (flipped if use_tta else plain).predict_batch(images) if images else []
        again = [replace(item, prediction=prediction) for item, prediction in zip(kept, predictions, strict=True)]
        return present(again, [], opacity, min_area, show, selected)

    def on_settings(kept: list[Segmented], opacity: float, min_area: float, show: list[str], selected: int):
        return present(kept, [], opacity, min_area, show, selected)[:5]

    def on_show(kept: list[Segmented], opacity: float, min_area: float, show: list[str], selected: int) -> Any:
        if not kept:
            return None
        return annotated_view(with_min_area(kept[min(selected, len(kept) - 1)], min_area), opacity, show)

    def on_pick(kept: list[Segmented], opacity: float, min_area: float, show: list[str], event: gr.SelectData):
        if not kept:
            return None, "", 0
        index = min(int(event.index), len(kept) - 1)
        item = with_min_area(kept[index], min_area)
        return annotated_view(item, opacity, show), result_caption(item, min_area, index, len(kept)), index

    # Uploads and outputs older than a day leave Gradio's cache (checked hourly), so disk use stays bounded.
    with gr.Blocks(title="polypseg: polyp segmentation", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown(
            "# polypseg: polyp segmentation\n"
            "Upload colonoscopy images or click an example below. "
            "**Research use only; not a medical device, not for diagnosis.**",
            elem_id="header",
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=320):
                files = gr.File(
                    label="Images (JPEG, PNG, ...; several at once)",
                    file_count="multiple",
                    file_types=list(IMAGE_SUFFIXES),
                    height=120,
                    elem_id="inputs",
                )
                gr.HTML('<p class="upload-refused" role="alert"></p>', elem_id="upload-note", padding=False)
                # JPEG: the shown photo is encoded per request, and JPEG costs a third less CPU than WebP.
                main = gr.AnnotatedImage(
                    label="Result (hover over the legend to show one layer)",
                    color_map=LAYER_COLOURS,
                    format="jpeg",
                    elem_id="main-result",
                )
                caption = gr.Markdown("", latex_delimiters=[], elem_id="caption")
                picker = gr.Gallery(
                    label="All results (click one to show it above)",
                    columns=6,
                    fit_columns=False,
                    object_fit="contain",
                    allow_preview=False,
                    interactive=False,
                    visible=False,
                    format="webp",
                    elem_id="picker",
                )
                summary = gr.Markdown(summary_markdown([]), latex_delimiters=[], elem_id="summary")
                download = gr.File(
                    label="All outputs (zip): masks, class maps, overlays, predictions.csv",
                    interactive=False,
                    visible=False,
                    elem_id="download",
                )
            with gr.Column(scale=2, min_width=300):
                example_table = gr.Dataset(
                    label="Examples (click one): Kvasir-SEG test images by the model's Dice percentile",
                    components=["image", "textbox"],
                    headers=["image", "what it shows"],
                    samples=[[str(path), text] for path, text in described],
                    type="index",
                    layout="table",
                    samples_per_page=max(10, len(described)),
                    elem_id="examples",
                )
                with gr.Group():
                    show = gr.CheckboxGroup(list(LAYERS), value=list(LAYERS), label="Show", elem_id="show")
                    opacity = gr.Slider(
                        0.0, 1.0, value=DEFAULT_OPACITY, step=0.05, label="Polyp layer opacity", elem_id="opacity"
                    )
                    min_area = gr.Slider(
                        0.0,
                        MAX_MIN_AREA_PERCENT,
                        value=default_min_area,
                        step=0.05,
                        label="Minimum polyp area (% of the frame) to count a polyp",
                        elem_id="min-area",
                    )
                    use_tta = gr.Checkbox(
                        value=predictor.tta if tta is None else tta,
                        label="Flip TTA: average over the image's flips (4x slower)",
                        elem_id="tta",
                    )
                gr.Markdown(HOW_TO_READ, latex_delimiters=[], elem_id="how-to-read")
        clear_button = gr.Button("Clear results", visible="hidden", elem_id="clear-results")
        kept = gr.State([])
        selected = gr.State(0)

        results = [main, caption, picker, summary, download, kept, selected]
        settings = [opacity, min_area, use_tta, show]
        # One network pass at a time: a forward pass already uses every core, and parallel ones would
        # multiply the memory of full-resolution logits. Re-rendering runs beside it, two at a time.
        network = {"concurrency_limit": 1, "concurrency_id": "network"}
        redraw = {"concurrency_limit": 2, "concurrency_id": "redraw", "trigger_mode": "always_last"}
        internal = {"api_visibility": "undocumented"}
        files.upload(on_upload, [files, *settings], results, api_name="segment", **network)
        files.delete(on_upload, [files, *settings], results, api_name="segment_remaining", **internal, **network)
        example_table.click(
            on_example,
            [example_table, *settings],
            [files, *results],
            api_name="example",
            scroll_to_output=True,
            **network,
        )
        use_tta.input(
            on_tta, [kept, *settings, selected], results, api_name="tta", trigger_mode="always_last", **network
        )
        for control in (opacity, min_area):
            control.change(
                on_settings,
                [kept, opacity, min_area, show, selected],
                results[:5],
                api_name="redraw",
                **internal,
                **redraw,
            )
        show.input(on_show, [kept, opacity, min_area, show, selected], main, api_name="show", **internal, **redraw)
        picker.select(
            on_pick, [kept, opacity, min_area, show], [main, caption, selected], api_name="pick", **internal, **redraw
        )
        # Clearing runs outside the queue: it must land before the next upload's results, never after.
        files.clear(cleared, None, results, api_name="clear", queue=False, **internal)
        clear_button.click(cleared, None, results, api_name="clear_for_upload", queue=False, **internal)
    demo.queue(max_size=queue_size, default_concurrency_limit=1)
    demo._polypseg_zip_root = zip_root  # type: ignore[attr-defined]  # lives as long as the page
    return demo


def host_warning(host: str) -> str | None:
    """A warning when ``host`` is not a loopback address (the page is then reachable from other machines)."""
    try:
        loopback = host.lower() == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        loopback = False
    if loopback:
        return None
    return (
        f"warning: the web demo listens on {host}, so other machines can reach it; it has no authentication "
        "and no encryption: anyone who can connect can upload images and use this machine (--host 127.0.0.1 "
        "serves this machine only)"
    )


def serve(
    weights: str | Path | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    block: bool = True,
    precision: str = "auto",
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    tta: bool = False,
    decoder_concat: str | None = None,
    threshold: float | None = None,
) -> "gr.Blocks":
    """Load the model once and serve the page on ``http://host:port``.

    Args:
        weights: Weights folder, ``.safetensors`` or run folder (``None``: the bundled model).
        host: Interface to listen on; the default serves this machine only, any other prints
            :func:`host_warning` on stderr.
        port: TCP port.
        block: Keep serving until interrupted; ``False`` returns the running app (call ``.close()``).
        precision: Predictor precision (``auto``, ``32``, ``bf16``).
        max_upload_mb: Largest upload per file, in MB (2**20 bytes); Gradio refuses larger ones.
        max_megapixels: Largest image segmented, in millions of pixels (the CLI's 100 caps it too).
        queue_size: Requests that may wait for the network.
        decoder_concat: The decoder concatenation order (see :func:`polypseg.load_pretrained`).
        threshold: Binary weights: polyp where the sigmoid probability is at least this (``None``: the
            threshold recorded with the weights, 0.5 where none is).
        tta: Default of the page's flip-TTA control.

    Returns:
        The launched :class:`gradio.Blocks`.

    Raises:
        UsageError: A limit is not positive.
        MissingExtraError: Gradio is not installed.
    """
    if not (max_upload_mb > 0 and max_megapixels > 0 and queue_size > 0):
        raise UsageError(
            f"the web demo's limits must be positive (max upload {max_upload_mb} MB, "
            f"{max_megapixels} megapixels, queue {queue_size})"
        )
    _import_gradio()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    warning = host_warning(host)
    if warning is not None:
        print(warning, file=sys.stderr)
    predictor = Predictor.from_pretrained(
        weights, precision=precision, decoder_concat=decoder_concat, threshold=threshold
    )
    demo = build_demo(predictor, max_megapixels=max_megapixels, queue_size=queue_size, tta=tta)
    demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        ssr_mode=False,
        show_error=True,
        quiet=not block,
        allowed_paths=[str(bundled_examples_dir())],
        max_file_size=int(max_upload_mb * 2**20),
        css=PAGE_CSS,
        head=PAGE_HEAD,
    )
    return demo
