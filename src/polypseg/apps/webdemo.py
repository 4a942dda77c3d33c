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
import io
import ipaddress
import json
import math
import os
import re
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from polypseg.classes import BOUNDARY, POLYP
from polypseg.files import atomic_save, csv_text
from polypseg.images import IMAGE_SUFFIXES, InputError, read_image
from polypseg.inference import CLASS_PALETTE, CSV_COLUMNS, JPEG_QUALITY, Prediction, Predictor, output_stems, overlay
from polypseg.inference.outputs import class_map_image, csv_row
from polypseg.weights import bundled_examples_dir

if TYPE_CHECKING:
    import gradio as gr

__all__ = [
    "EXAMPLE_DESCRIPTIONS",
    "Segmented",
    "annotated_view",
    "build_demo",
    "escape_markdown",
    "example_list",
    "host_warning",
    "read_upload",
    "render_overlay",
    "result_caption",
    "segment_paths",
    "serve",
    "summary_markdown",
    "with_min_area",
    "write_results_zip",
]

#: Colour of the polyp boxes drawn on the overlays (cyan: distinct from the green tint and yellow rim).
BOX_COLOUR = (0, 220, 255)
DEFAULT_OPACITY = 0.4
#: Largest upload Gradio accepts, per file, in MB (2**20 bytes).
DEFAULT_MAX_UPLOAD_MB = 20.0
#: Largest image the page segments, in millions of pixels: its logits (3 float32 per pixel) are computed at
#: full resolution, 480 MB at 40 MP, so the page refuses earlier than the CLI's 100 MP.
DEFAULT_MAX_MEGAPIXELS = 40.0
#: Images segmented per request; further files get a line naming them (memory per request stays bounded).
MAX_IMAGES_PER_REQUEST = 16
#: Requests that may wait for the network; further ones are told the queue is full.
DEFAULT_QUEUE_SIZE = 32
#: The page shows images at most this many pixels on their longer side (the zip keeps full resolution):
#: Gradio builds each annotation layer as a float64 RGBA array of the shown size.
DISPLAY_MAX_SIDE = 1600
#: Longer side of the result picker's thumbnails.
THUMBNAIL_SIDE = 192
#: Largest minimum polyp area the page offers, in percent of the frame.
MAX_MIN_AREA_PERCENT = 5.0
#: Names of the annotation layers (legend and "Show" toggles), in drawing order.
LAYERS = ("polyp", "boundary", "counted polyp box")
LAYER_COLOURS = {
    "polyp": "#{:02x}{:02x}{:02x}".format(*CLASS_PALETTE[POLYP]),
    "boundary": "#{:02x}{:02x}{:02x}".format(*CLASS_PALETTE[BOUNDARY]),
    "counted polyp box": "#{:02x}{:02x}{:02x}".format(*BOX_COLOUR),
}
ZIP_NAME = "polypseg-results.zip"

#: One line per bundled example, in the order shown: the Kvasir-SEG test images at the 10th, 30th, 50th,
#: 70th and 90th percentile of the bundled model's per-image polyp Dice (0.55, 0.80, 0.92, 0.95, 0.97 at
#: 256x256; scripts/bundle_model.py picks them).
EXAMPLE_DESCRIPTIONS = {
    "cju87nkyrnb970801q84m47yt.jpg": "Reddish polyp on a fold at the right edge (10th percentile)",
    "cju7dxffn2eam0817qxosfwch.jpg": "Lobed yellowish polyp right of the lumen (30th percentile)",
    "cju8apjewqrk00801k5d71gky.jpg": "Smooth polyp below the lumen, lower right (50th percentile)",
    "cju34c1xfyz920993itxkkfad.jpg": "Large pale polyp across the lower left (70th percentile)",
    "cju7dsrtb2f8i085064kwugfk.jpg": "Pale polyp beside the dark lumen (90th percentile)",
}
#: Gradio's example table cuts longer descriptions.
MAX_DESCRIPTION_CHARS = 60

HOW_TO_READ = """\
**How to read this.** Green: pixels the model calls polyp; yellow: the polyp's boundary class; cyan: the \
box around each counted polyp. Hover over a legend entry to show only that layer, over the image to see \
the photo under the layers.

- **Polyp area** is the share of the **whole frame** (black endoscope border and text included) that is \
polyp or boundary, so the same polyp reads smaller in a frame with a wide border.
- **Polyps** counts connected regions of at least the **minimum polyp area** (default 0.1 % of the \
frame); smaller specks stay in the mask and the area but are not counted or boxed.
- **Boxes** are pixel coordinates in the original image, `[x_min, y_min, x_max, y_max]` from the top-left \
corner, max exclusive (as in `predictions.csv`).
- **TTA** averages the network's output over the image and its three flips: four times slower, \
usually a little more accurate.

Research use only; not a medical device, not for diagnosis."""

#: Styles: exact layer opacity (Gradio dims masks to 0.85), a table that scrolls instead of wrapping, a
#: compact header and example list on phones.
PAGE_CSS = """
#main-result .mask { opacity: 1; }
#main-result .image-container:hover .mask { opacity: 0.25; }
#main-result .mask.active { opacity: 1; }
#main-result .mask.inactive { opacity: 0; }
#upload-note .upload-refused { margin: 0; font-weight: 600; }
#upload-note .upload-refused:empty { display: none; }
#summary table { display: block; overflow-x: auto; max-width: 100%; }
#summary th, #summary td { white-space: nowrap; }
#examples img { object-fit: contain; }
#header h1 { margin-bottom: 0.2em; }
@media (max-width: 640px) {
  #header h1 { font-size: 1.4em; }
  #header p { font-size: 0.9em; margin: 0; }
}
"""

#: Clears the results the moment new files are chosen or dropped (before they upload), so old results never
#: sit next to a new upload; when a chosen file is over Gradio's size limit (Gradio would refuse it), the
#: file list is cleared too and one line under it names the file and the limit (as text, never as HTML).
PAGE_HEAD = """
<script>
(() => {
  const clearResults = (event) => {
    const inputs = event.target instanceof Element ? event.target.closest("#inputs") : null;
    if (!inputs) return;
    const chosen = event.type === "drop" ? event.dataTransfer?.files : event.target.files;
    if (event.type === "change" && !(event.target instanceof HTMLInputElement && event.target.type === "file")) return;
    document.querySelector("#clear-results")?.click();
    const note = document.querySelector("#upload-note .upload-refused");
    if (note) note.textContent = "";
    const limit = window.gradio_config?.max_file_size;
    const refused = limit && chosen ? Array.from(chosen).filter((file) => file.size > limit) : [];
    if (refused.length) {
      inputs.querySelector("button[aria-label='Clear']")?.click();
      const megabytes = Math.round((limit / 2 ** 20) * 100) / 100;
      const names = refused.map((file) => file.name).join(", ");
      if (note) note.textContent = `Not uploaded: ${names}: over this page's limit of ${megabytes} MB per file`;
    }
  };
  document.addEventListener("change", clearResults, true);
  document.addEventListener("drop", clearResults, true);
})();
</script>
"""


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


def _name_list(names: Sequence[str], shown: int = 5) -> str:
    listed = ", ".join(names[:shown])
    return listed if len(names) <= shown else f"{listed} and {len(names) - shown} more"


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
        max_images: Segment at most this many files; one error line names the rest.

    Returns:
        The results, in input order, and one-line errors (``name: problem``) for files not segmented.
    """
    paths = [Path(path) for path in paths]
    errors: list[str] = []
    if max_images is not None and len(paths) > max_images:
        extra = [path.name for path in paths[max_images:]]
        errors.append(f"{_name_list(extra)}: at most {max_images} images are segmented per upload")
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


def with_min_area(item: Segmented, min_area_percent: float) -> Segmented:
    """``item`` counting only the polyp regions of at least ``min_area_percent`` of the frame.

    ``item`` should hold every region (segmented with ``min_polyp_fraction=0``); the minimum is applied as
    :class:`~polypseg.inference.Predictor` applies its ``min_polyp_fraction``. The mask is unchanged.
    """
    height, width = item.image.shape[:2]
    min_pixels = max(1, math.ceil(min_area_percent / 100.0 * height * width))
    counted = [region for region in item.prediction.polyps if region.pixels >= min_pixels]
    return replace(item, prediction=Prediction(item.prediction.class_map, counted))


def render_overlay(item: Segmented, opacity: float) -> np.ndarray:
    """The overlay of :func:`polypseg.inference.overlay` with each counted polyp's box drawn on it."""
    picture = Image.fromarray(overlay(item.image, item.prediction.class_map, opacity))
    draw = ImageDraw.Draw(picture)
    width = max(1, round(max(picture.size) / 250))
    for region in item.prediction.polyps:
        x_min, y_min, x_max, y_max = region.box
        draw.rectangle((x_min, y_min, x_max - 1, y_max - 1), outline=BOX_COLOUR, width=width)
    return np.asarray(picture)


def _display_scale(image: np.ndarray, max_side: int) -> float:
    return min(1.0, max_side / max(image.shape[:2]))


def _resized(array: np.ndarray, scale: float, resample: Image.Resampling) -> np.ndarray:
    if scale >= 1.0:
        return array
    height, width = array.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(array).resize(size, resample))


def annotated_view(
    item: Segmented, opacity: float, show: Sequence[str] = LAYERS, max_side: int = DISPLAY_MAX_SIDE
) -> tuple[np.ndarray, list[tuple[np.ndarray, str]]]:
    """The value of the page's ``gr.AnnotatedImage``: the image and one layer per shown class.

    Args:
        item: A segmented image (its ``prediction.polyps`` are the boxed, counted polyps).
        opacity: Alpha of the polyp layer (the boundary and the boxes are solid).
        show: Names of the layers to include (of :data:`LAYERS`).
        max_side: Images with a longer side are shown scaled down (aspect ratio kept).

    Returns:
        The (possibly scaled) RGB image and ``(alpha mask in [0, 1], layer name)`` pairs of its size.
    """
    scale = _display_scale(item.image, max_side)
    image = _resized(item.image, scale, Image.Resampling.BILINEAR)
    classes = _resized(item.prediction.class_map, scale, Image.Resampling.NEAREST)
    layers: list[tuple[np.ndarray, str]] = []
    if "polyp" in show:
        layers.append(((classes == POLYP) * float(opacity), "polyp"))
    if "boundary" in show:
        layers.append(((classes == BOUNDARY).astype(np.float64), "boundary"))
    if "counted polyp box" in show:
        boxes = Image.new("L", (image.shape[1], image.shape[0]))
        draw = ImageDraw.Draw(boxes)
        line = max(2, round(max(boxes.size) / 250))
        for region in item.prediction.polyps:
            x_min, y_min, x_max, y_max = (round(value * scale) for value in region.box)
            draw.rectangle((x_min, y_min, max(x_min, x_max - 1), max(y_min, y_max - 1)), outline=255, width=line)
        layers.append((np.asarray(boxes) / 255.0, "counted polyp box"))
    return image, layers


def _thumbnail(item: Segmented, opacity: float) -> np.ndarray:
    scale = _display_scale(item.image, THUMBNAIL_SIDE)
    image = _resized(item.image, scale, Image.Resampling.BILINEAR)
    classes = _resized(item.prediction.class_map, scale, Image.Resampling.NEAREST)
    return overlay(image, classes, opacity)


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


def _polyp_count(count: int) -> str:
    return f"{count} polyp{'s' if count != 1 else ''}"


def result_caption(item: Segmented, min_area_percent: float, index: int = 0, total: int = 1) -> str:
    """One line of Markdown under the shown image: its name, size, polyp area and count."""
    height, width = item.image.shape[:2]
    position = f"Image {index + 1} of {total}: " if total > 1 else ""
    return (
        f"{position}**{escape_markdown(item.name)}** ({width} x {height} px): polyp area "
        f"**{item.prediction.polyp_area_percent:.1f} %** of the frame, **{_polyp_count(len(item.prediction.polyps))}** "
        f"counted (regions of at least {min_area_percent:g} % of the frame)"
    )


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


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def write_results_zip(items: Sequence[Segmented], path: str | Path, opacity: float = DEFAULT_OPACITY) -> Path:
    """One zip of every output, as ``polypseg predict`` names them, with the boxes drawn on the overlays.

    Per image: ``STEM_mask.png`` (binary polyp mask, 0/255), ``STEM_classes.png`` (palette class map) and
    ``STEM_overlay.jpg`` (:func:`render_overlay` at ``opacity``); and ``predictions.csv`` with a row per
    image in the columns of ``polypseg predict`` (``file`` is the uploaded name). Written atomically.
    """
    rows: list[dict[str, object]] = []
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for item in items:
            archive.writestr(
                f"{item.stem}_mask.png", _png(Image.fromarray(item.prediction.polyp_mask.astype(np.uint8) * 255))
            )
            archive.writestr(f"{item.stem}_classes.png", _png(class_map_image(item.prediction.class_map)))
            picture = io.BytesIO()
            Image.fromarray(render_overlay(item, opacity)).save(picture, format="JPEG", quality=JPEG_QUALITY)
            archive.writestr(f"{item.stem}_overlay.jpg", picture.getvalue())
            rows.append(csv_row(item.name, item.stem, item.image, item.prediction))
        archive.writestr("predictions.csv", csv_text(CSV_COLUMNS, rows))
    path = Path(path)
    atomic_save(path, lambda temporary: Path(temporary).write_bytes(buffer.getvalue()))
    return path


def example_list(examples: Sequence[Path] | None = None) -> list[tuple[Path, str]]:
    """Example images and their one-line descriptions, in the order the page shows them.

    Args:
        examples: Image files (default: the bundled examples, described by :data:`EXAMPLE_DESCRIPTIONS`,
            in its order). Files without a description are described by their name.
    """
    if examples is None:
        folder = bundled_examples_dir()
        found = {p.name: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        ordered = [found[name] for name in EXAMPLE_DESCRIPTIONS if name in found]
        examples = ordered + sorted(p for name, p in found.items() if name not in EXAMPLE_DESCRIPTIONS)
    return [(Path(path), EXAMPLE_DESCRIPTIONS.get(Path(path).name, Path(path).name)) for path in examples]


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
            gr.update(value=[_thumbnail(item, opacity) for item in items], visible=len(items) > 1),
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
    host: str = "127.0.0.1",
    port: int = 7860,
    block: bool = True,
    precision: str = "auto",
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    tta: bool = False,
    decoder_concat: str | None = None,
    threshold: float = 0.5,
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
        threshold: Binary weights: polyp where the sigmoid probability is at least this.
        tta: Default of the page's flip-TTA control.

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
