"""The web demo's page content without Gradio: segmenting uploads, rendering results, writing the zip.

Everything :mod:`polypseg.apps.webdemo` shows is made here from plain arrays and strings: the annotated
view and thumbnails of a segmented image, its caption, the table with a row per image (file names escaped
for Markdown), the zip of every output, the bundled examples with their one-line descriptions and the note
on how to read the numbers. Nothing here imports Gradio, so it runs and is tested without the ``demo``
extra. It also reads the page's static styles and script (:data:`PAGE_CSS`, :data:`PAGE_HEAD`) from
``assets/`` beside it.
"""

import io
import json
import math
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from polypseg.classes import BOUNDARY, POLYP
from polypseg.files import atomic_save, csv_text
from polypseg.images import IMAGE_SUFFIXES, InputError, read_image
from polypseg.inference import CLASS_PALETTE, CSV_COLUMNS, JPEG_QUALITY, Prediction, Predictor, output_stems, overlay
from polypseg.inference.outputs import class_map_image, csv_row
from polypseg.weights import bundled_examples_dir

__all__ = [
    "EXAMPLE_DESCRIPTIONS",
    "HOW_TO_READ",
    "LAYERS",
    "PAGE_CSS",
    "PAGE_HEAD",
    "Segmented",
    "annotated_view",
    "escape_markdown",
    "example_list",
    "read_upload",
    "render_overlay",
    "result_caption",
    "segment_paths",
    "summary_markdown",
    "thumbnail",
    "with_min_area",
    "write_results_zip",
]

#: Colour of the polyp boxes drawn on the overlays (cyan: distinct from the green tint and yellow rim).
BOX_COLOUR = (0, 220, 255)
DEFAULT_OPACITY = 0.4
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

#: The page's styles (``assets/page.css``: exact layer opacity, a table that scrolls, a compact phone header).
PAGE_CSS = (files("polypseg.apps") / "assets" / "page.css").read_text(encoding="utf-8")
#: The page's script (``assets/page_head.html``): results clear the moment new files are chosen or dropped,
#: and a file over the upload limit is named in one line under the file list.
PAGE_HEAD = (files("polypseg.apps") / "assets" / "page_head.html").read_text(encoding="utf-8")


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
    """:func:`polypseg.images.read_image` with a lower pixel limit, judged from the header before decoding.

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
        max_pixels: Refuse larger images (default: :func:`polypseg.images.read_image`'s limit only).
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


def thumbnail(item: Segmented, opacity: float) -> np.ndarray:
    """A small overlay of ``item`` for the result picker (longer side at most :data:`THUMBNAIL_SIDE`)."""
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
