"""``polypseg demo --web``: a Gradio page to segment images in the browser.

Upload one or more images (or click a bundled example) and see, per image, the overlay with the polyp
boxes, the class map, the polyp area, count and boxes, and download the binary masks. The opacity slider
re-renders the overlays from the kept class maps without running the network again. One
:class:`~polypseg.inference.Predictor` is loaded at start and serves every request.

Gradio is the optional ``demo`` extra (``pip install 'polypseg[demo]'``); it is imported only here. This
module keeps annotations evaluated (no ``from __future__ import annotations``): Gradio reads the
``gr.SelectData`` annotation of the example handler at run time to pass it the clicked example.
"""

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from polypseg.inference import CLASS_PALETTE, Prediction, Predictor, overlay
from polypseg.io import IMAGE_SUFFIXES, InputError, atomic_save, read_image
from polypseg.weights import bundled_examples_dir

if TYPE_CHECKING:
    import gradio as gr

__all__ = ["Segmented", "build_demo", "render_overlay", "segment_paths", "serve", "summary_markdown"]

#: Colour of the polyp boxes drawn on the overlays (cyan: distinct from the green tint and yellow rim).
BOX_COLOUR = (0, 220, 255)
DEFAULT_OPACITY = 0.4


@dataclass
class Segmented:
    """One segmented image kept between events: its name, pixels and prediction."""

    name: str
    image: np.ndarray
    prediction: Prediction


def segment_paths(
    predictor: Predictor, paths: Sequence[str | Path], batch_size: int = 4
) -> tuple[list[Segmented], list[str]]:
    """Read and segment image files; returns the results and one-line errors for files that cannot be read."""
    loaded: list[tuple[str, np.ndarray]] = []
    errors: list[str] = []
    for path in paths:
        try:
            loaded.append((Path(path).name, read_image(path)))
        except InputError as error:
            errors.append(f"{Path(path).name}: {error.problem}")
    results: list[Segmented] = []
    for start in range(0, len(loaded), batch_size):
        chunk = loaded[start : start + batch_size]
        predictions = predictor.predict_batch([image for _, image in chunk])
        results.extend(Segmented(name, image, p) for (name, image), p in zip(chunk, predictions, strict=True))
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


def summary_markdown(items: Sequence[Segmented], errors: Sequence[str] = ()) -> str:
    """A Markdown table with one row per image: size, polyp area (%), polyp count and boxes.

    The area is rounded to 3 decimals exactly as in ``predictions.csv``.
    """
    if not items and not errors:
        return "Upload images or click an example."
    lines = []
    if items:
        lines += [
            "| image | width x height | polyp area (%) | polyps | boxes [x_min, y_min, x_max, y_max] |",
            "|---|---|---|---|---|",
        ]
        for item in items:
            height, width = item.image.shape[:2]
            boxes = json.dumps([list(region.box) for region in item.prediction.polyps])
            area = round(item.prediction.polyp_area_percent, 3)
            lines.append(f"| {item.name} | {width} x {height} | {area} | {len(item.prediction.polyps)} | {boxes} |")
    lines += [f"\n**Not segmented:** {error}" for error in errors]
    return "\n".join(lines)


def _write_masks(items: Sequence[Segmented], folder: Path) -> list[str]:
    paths = []
    for item in items:
        path = folder / f"{Path(item.name).stem}_mask.png"
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


def build_demo(predictor: Predictor, examples: Sequence[Path] | None = None) -> "gr.Blocks":
    """The Gradio page around a loaded predictor (not launched).

    Args:
        predictor: The loaded model, shared by every request.
        examples: Example images offered for one click (default: the bundled examples).
    """
    gr = _import_gradio()

    if examples is None:
        examples = sorted(p for p in bundled_examples_dir().iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    examples = list(examples)
    # Masks offered for download; Gradio copies them into its own cache, this folder goes at exit.
    mask_root = tempfile.TemporaryDirectory(prefix="polypseg-demo-")

    def run(paths: Sequence[str], opacity: float) -> tuple[Any, ...]:
        items, errors = segment_paths(predictor, paths)
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

    with gr.Blocks(title="polypseg demo", analytics_enabled=False) as demo:
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
                summary = gr.Markdown(summary_markdown([]), elem_id="summary")
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
        files.upload(on_upload, [files, opacity], outputs)
        example_gallery.select(on_example, [opacity], outputs)
        opacity.change(on_opacity, [kept, opacity], overlays, trigger_mode="always_last")
    demo._polypseg_mask_root = mask_root  # type: ignore[attr-defined]  # lives as long as the page
    return demo


def serve(
    weights: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    block: bool = True,
    precision: str = "auto",
) -> "gr.Blocks":
    """Load the model once and serve the page on ``http://host:port``.

    Args:
        weights: Weights folder, ``.safetensors`` or run folder (``None``: the bundled model).
        host: Interface to listen on; the default serves this machine only.
        port: TCP port.
        block: Keep serving until interrupted; ``False`` returns the running app (call ``.close()``).
        precision: Predictor precision (``auto``, ``32``, ``bf16``).

    Returns:
        The launched :class:`gradio.Blocks`.
    """
    _import_gradio()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    predictor = Predictor.from_pretrained(weights, precision=precision)
    demo = build_demo(predictor)
    demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        ssr_mode=False,
        show_error=True,
        quiet=not block,
        allowed_paths=[str(bundled_examples_dir())],
    )
    return demo
