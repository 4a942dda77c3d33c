"""``polypseg demo --web``: a Gradio page to segment images in the browser.

Upload one or more images (or click a bundled example) and see, per image, the overlay with the polyp
boxes, the class map, the polyp area, count and boxes, and download the binary masks. The opacity slider
re-renders the overlays from the kept class maps without running the network again. One
:class:`~polypseg.inference.Predictor` is loaded at start and serves every request.

Uploads are untrusted: each file is limited in bytes (Gradio refuses larger uploads) and, judged from its
header before decoding, in pixels (lower than the CLI's limit, since logits are computed at full
resolution); a file that is not a readable image gets one line in the page and the others are still
segmented; file names are escaped before they reach the Markdown table. Requests wait in a bounded queue
and the network runs for one request at a time. The page listens on 127.0.0.1 unless told otherwise, and
:func:`serve` warns when it is not.

Gradio is the optional ``demo`` extra (``pip install 'polypseg[demo]'``); it is imported only here. This
module keeps annotations evaluated (no ``from __future__ import annotations``): Gradio reads the
``gr.SelectData`` annotation of the example handler at run time to pass it the clicked example.
"""

import ipaddress
import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from polypseg.inference import CLASS_PALETTE, Prediction, Predictor, output_stems, overlay
from polypseg.io import IMAGE_SUFFIXES, InputError, atomic_save, read_image
from polypseg.weights import bundled_examples_dir

if TYPE_CHECKING:
    import gradio as gr

__all__ = [
    "Segmented",
    "build_demo",
    "escape_markdown",
    "host_warning",
    "read_upload",
    "render_overlay",
    "segment_paths",
    "serve",
    "summary_markdown",
]

#: Colour of the polyp boxes drawn on the overlays (cyan: distinct from the green tint and yellow rim).
BOX_COLOUR = (0, 220, 255)
DEFAULT_OPACITY = 0.4
#: Largest upload Gradio accepts, per file, in MB (2**20 bytes).
DEFAULT_MAX_UPLOAD_MB = 20.0
#: Largest image the page segments, in millions of pixels: its logits (3 float32 per pixel) are computed at
#: full resolution, 480 MB at 40 MP, so the page refuses earlier than the CLI's 100 MP.
DEFAULT_MAX_MEGAPIXELS = 40.0
#: Images segmented per request; further files get a line saying so (memory per request stays bounded).
MAX_IMAGES_PER_REQUEST = 16
#: Requests that may wait for the network; further ones are told the queue is full.
DEFAULT_QUEUE_SIZE = 32


@dataclass
class Segmented:
    """One segmented image kept between events.

    Attributes:
        name: The uploaded file's name (shown; two uploads may share it).
        image: (H, W, 3) uint8 RGB.
        prediction: Its segmentation.
        stem: Output name stem, unique within a request (``a``, ``a-2``, as ``polypseg predict`` names them).
    """

    name: str
    image: np.ndarray
    prediction: Prediction
    stem: str

    @property
    def mask_name(self) -> str:
        """File name of the downloadable binary mask."""
        return f"{self.stem}_mask.png"


def read_upload(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """:func:`polypseg.io.read_image` with a lower pixel limit, judged from the header before decoding.

    Raises:
        InputError: The file is not a readable image, or has more than ``max_pixels`` pixels.
    """
    if max_pixels is not None:
        try:
            with Image.open(path) as header:
                width, height = header.size
        except Exception:  # not an image, or a damaged one: read_image says which, in one line
            width = height = 0
        if width * height > max_pixels:
            raise InputError(
                path, f"image of {width}x{height} = {width * height:,} pixels, over this page's {max_pixels:,}"
            )
    return read_image(path)


def segment_paths(
    predictor: Predictor,
    paths: Sequence[str | Path],
    batch_size: int = 4,
    max_pixels: int | None = None,
    max_images: int | None = None,
) -> tuple[list[Segmented], list[str]]:
    """Read and segment image files.

    Args:
        predictor: The loaded model.
        paths: Image files; each is read with :func:`read_upload`.
        batch_size: Images per network call.
        max_pixels: Refuse larger images (default: :func:`polypseg.io.read_image`'s limit only).
        max_images: Segment at most this many files; the rest get one error line together.

    Returns:
        The results, in input order, and one-line errors (``name: problem``) for files not segmented.
    """
    paths = [Path(path) for path in paths]
    errors: list[str] = []
    if max_images is not None and len(paths) > max_images:
        errors.append(f"{len(paths) - max_images} more files: at most {max_images} images are segmented at once")
        paths = paths[:max_images]
    loaded: list[tuple[Path, str, np.ndarray]] = []
    for path, stem in zip(paths, output_stems(paths), strict=True):
        try:
            loaded.append((path, stem, read_upload(path, max_pixels)))
        except InputError as error:
            errors.append(f"{path.name}: {error.problem}")
    results: list[Segmented] = []
    for start in range(0, len(loaded), batch_size):
        chunk = loaded[start : start + batch_size]
        predictions = predictor.predict_batch([image for _, _, image in chunk])
        results.extend(
            Segmented(path.name, image, prediction, stem)
            for (path, stem, image), prediction in zip(chunk, predictions, strict=True)
        )
    return results, errors


def render_overlay(item: Segmented, opacity: float) -> np.ndarray:
    """The overlay of :func:`polypseg.inference.overlay` with each counted polyp's box drawn on it."""
    picture = Image.fromarray(overlay(item.image, item.prediction.class_map, opacity))
    draw = ImageDraw.Draw(picture)
    width = max(1, round(max(picture.size) / 250))
    for region in item.prediction.polyps:
        x_min, y_min, x_max, y_max = region.box
        draw.rectangle((x_min, y_min, x_max - 1, y_max - 1), outline=BOX_COLOUR, width=width)
    return np.asarray(picture)


def _class_map_image(prediction: Prediction) -> np.ndarray:
    return np.asarray(CLASS_PALETTE, dtype=np.uint8)[prediction.class_map]


def _caption(item: Segmented) -> str:
    count = len(item.prediction.polyps)
    return f"{item.name}: polyp {item.prediction.polyp_area_percent:.1f}%, {count} polyp{'s' if count != 1 else ''}"


_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def escape_markdown(text: str) -> str:
    r"""``text`` as Markdown that renders as exactly ``text``, on one line, also inside a table cell.

    Every ASCII punctuation character is backslash-escaped (CommonMark allows it for all of them), so no
    emphasis, link, autolink, HTML tag, entity or cell separator can start; characters that do not print
    (newlines, control characters) are shown as Python escapes.

    Example:
        >>> escape_markdown("a|b_[c](d).jpg")
        'a\\|b\\_\\[c\\]\\(d\\)\\.jpg'
    """
    printable = "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", printable)


def summary_markdown(items: Sequence[Segmented], errors: Sequence[str] = ()) -> str:
    """A Markdown table with one row per image: size, polyp area (%), polyp count, boxes and mask file.

    The area is rounded to 3 decimals exactly as in ``predictions.csv``. File names and error lines are
    escaped with :func:`escape_markdown`.
    """
    if not items and not errors:
        return "Upload images or click an example."
    lines = []
    if items:
        lines += [
            "| image | width x height | polyp area (%) | polyps | boxes [x_min, y_min, x_max, y_max] | mask |",
            "|---|---|---|---|---|---|",
        ]
        for item in items:
            height, width = item.image.shape[:2]
            boxes = json.dumps([list(region.box) for region in item.prediction.polyps])
            area = round(item.prediction.polyp_area_percent, 3)
            name, mask = escape_markdown(item.name), escape_markdown(item.mask_name)
            lines.append(f"| {name} | {width} x {height} | {area} | {len(item.prediction.polyps)} | {boxes} | {mask} |")
    lines += [f"\n**Not segmented:** {escape_markdown(error)}" for error in errors]
    return "\n".join(lines)


def _write_masks(items: Sequence[Segmented], folder: Path) -> list[str]:
    paths = []
    for item in items:
        path = folder / item.mask_name
        mask = Image.fromarray(item.prediction.polyp_mask.astype(np.uint8) * 255)
        atomic_save(path, lambda temporary, mask=mask: mask.save(temporary, format="PNG"))
        paths.append(str(path))
    return paths


def _import_gradio() -> Any:
    try:
        import gradio
    except ImportError as error:
        raise ImportError(f"the web demo needs Gradio ({error}): pip install 'polypseg[demo]'") from None
    return gradio


def build_demo(
    predictor: Predictor,
    examples: Sequence[Path] | None = None,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    queue_size: int = DEFAULT_QUEUE_SIZE,
) -> "gr.Blocks":
    """The Gradio page around a loaded predictor (not launched), with its queue.

    Segmenting (an upload or an example click) runs for one request at a time, in Gradio's queue of at
    most ``queue_size`` waiting requests; re-rendering overlays for the opacity slider runs beside it.

    Args:
        predictor: The loaded model, shared by every request.
        examples: Example images offered for one click (default: the bundled examples).
        max_megapixels: Larger uploaded images are refused (one line in the page) before decoding.
        queue_size: Requests that may wait; further ones are refused with "queue is full".
    """
    gr = _import_gradio()

    if examples is None:
        examples = sorted(p for p in bundled_examples_dir().iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    examples = list(examples)
    # Masks offered for download; Gradio copies them into its own cache, this folder goes at exit.
    mask_root = tempfile.TemporaryDirectory(prefix="polypseg-demo-")

    max_pixels = int(max_megapixels * 1_000_000)

    def run(paths: Sequence[str], opacity: float) -> tuple[Any, ...]:
        items, errors = segment_paths(predictor, paths, max_pixels=max_pixels, max_images=MAX_IMAGES_PER_REQUEST)
        masks = _write_masks(items, Path(tempfile.mkdtemp(dir=mask_root.name))) if items else None
        return (
            [(render_overlay(item, opacity), _caption(item)) for item in items],
            [(_class_map_image(item.prediction), item.name) for item in items],
            summary_markdown(items, errors),
            masks,
            items,
        )

    def on_upload(files: list[str] | None, opacity: float) -> tuple[Any, ...]:
        return run(files or [], opacity)

    def on_example(opacity: float, event: gr.SelectData) -> tuple[Any, ...]:
        return run([str(examples[event.index])], opacity)

    def on_opacity(items: list[Segmented], opacity: float) -> list[tuple[np.ndarray, str]]:
        return [(render_overlay(item, opacity), _caption(item)) for item in items]

    # Uploads and outputs older than a day leave Gradio's cache (checked hourly), so disk use stays bounded.
    with gr.Blocks(title="polypseg demo", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown(
            "# polypseg: polyp segmentation\n"
            "Green: polyp, yellow: its boundary, cyan: boxes of counted polyps. "
            "**Research use only; not a medical device, not for diagnosis.**"
        )
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(
                    label="Images", file_count="multiple", file_types=list(IMAGE_SUFFIXES), elem_id="inputs"
                )
                example_gallery = gr.Gallery(
                    value=[(str(path), path.name) for path in examples],
                    label="Examples (click one)",
                    columns=5,
                    height=140,
                    allow_preview=False,
                    interactive=False,
                    elem_id="examples",
                )
                opacity = gr.Slider(
                    0.0, 1.0, value=DEFAULT_OPACITY, step=0.05, label="Overlay opacity", elem_id="opacity"
                )
                masks = gr.File(label="Binary masks (PNG)", file_count="multiple", interactive=False, elem_id="masks")
            with gr.Column(scale=2):
                summary = gr.Markdown(summary_markdown([]), latex_delimiters=[], elem_id="summary")
                overlays = gr.Gallery(label="Overlay", format="png", columns=2, height=420, elem_id="overlays")
                class_maps = gr.Gallery(
                    label="Class map (black background, green polyp, yellow boundary)",
                    format="png",
                    columns=2,
                    height=420,
                    elem_id="class-maps",
                )
        kept = gr.State([])
        outputs = [overlays, class_maps, summary, masks, kept]
        # One network pass at a time: a forward pass already uses every core, and parallel ones would
        # multiply the memory of full-resolution logits.
        network = {"concurrency_limit": 1, "concurrency_id": "network"}
        files.upload(on_upload, [files, opacity], outputs, api_name="segment", **network)
        example_gallery.select(on_example, [opacity], outputs, api_name="example", **network)
        opacity.change(on_opacity, [kept, opacity], overlays, api_name="opacity", trigger_mode="always_last")
    demo.queue(max_size=queue_size, default_concurrency_limit=1)
    demo._polypseg_mask_root = mask_root  # type: ignore[attr-defined]  # lives as long as the page
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
    host: str = "127.0.0.1",
    port: int = 7860,
    block: bool = True,
    precision: str = "auto",
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    queue_size: int = DEFAULT_QUEUE_SIZE,
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

    Returns:
        The launched :class:`gradio.Blocks`.

    Raises:
        ValueError: A limit is not positive.
    """
    if not (max_upload_mb > 0 and max_megapixels > 0 and queue_size > 0):
        raise ValueError(
            f"the web demo's limits must be positive (max upload {max_upload_mb} MB, "
            f"{max_megapixels} megapixels, queue {queue_size})"
        )
    _import_gradio()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    warning = host_warning(host)
    if warning is not None:
        print(warning, file=sys.stderr)
    predictor = Predictor.from_pretrained(weights, precision=precision)
    demo = build_demo(predictor, max_megapixels=max_megapixels, queue_size=queue_size)
    demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        ssr_mode=False,
        show_error=True,
        quiet=not block,
        allowed_paths=[str(bundled_examples_dir())],
        max_file_size=int(max_upload_mb * 2**20),
    )
    return demo
