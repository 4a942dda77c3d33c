"""The model card of a run or weights folder: ``README.md`` with Hugging Face Hub metadata.

:func:`model_card` writes it from the weights' ``config.json``, the run's ``config.yaml``, ``splits.json`` and
``metrics.csv`` and, optionally, the ``metrics.json`` of ``polypseg evaluate``. Every number in it comes
from those files. :func:`polypseg.publish.push.push_to_hub` uploads it with the weights.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any

import torch
import yaml
from huggingface_hub import EvalResult, ModelCardData

from polypseg.classes import CLASS_NAMES, DEFAULT_BOUNDARY_WIDTH_PX
from polypseg.model import UNet
from polypseg.publish.card_sources import Sources, read_sources
from polypseg.weights import WeightsLike
from polypseg.weights.config import ARCHITECTURE_KEYS, CONFIG_NAME, WEIGHTS_NAME
from polypseg.weights.hub import CARD_REPO, HUB_PREFIX

__all__ = ["CARD_NAME", "model_card"]

CARD_NAME = "README.md"
KVASIR_SEG_URL = "https://datasets.simula.no/kvasir-seg/"
#: The card's text around its computed sections (``string.Template``: ``${name}`` is filled in).
_TEMPLATE = Template((files("polypseg.publish") / "card_template.md").read_text(encoding="utf-8"))
#: The last line of "Intended use" for the 3-class variant.
_BOUNDARY_NOTE = (
    "- The boundary class is a convention of polypseg derived from the annotated masks, not an annotation of its own.\n"
)


def _number(value: Any, digits: int = 4) -> str:
    return f"{float(value):.{digits}f}"


#: (metrics.json key, label) of the evaluation table, in order; only keys present in the file are shown.
_EVALUATION_ROWS = (
    ("mean_dice", "Dice, 3-class mean (background included; the model card's figure)"),
    ("mean_iou", "IoU, 3-class mean"),
    *((f"dice_{name}", f"Dice, class {index} {name}") for index, name in enumerate(CLASS_NAMES)),
    *((f"iou_{name}", f"IoU, class {index} {name}") for index, name in enumerate(CLASS_NAMES)),
    ("polyp_dice", "Polyp Dice (classes 1+2 vs. the annotated mask), mean over images"),
    ("polyp_iou", "Polyp IoU, mean over images"),
    ("polyp_precision", "Polyp precision, mean over images"),
    ("polyp_recall", "Polyp recall, mean over images"),
    ("polyp_dice_dataset", "Polyp Dice, dataset-level"),
    ("polyp_iou_dataset", "Polyp IoU, dataset-level"),
    ("polyp_precision_dataset", "Polyp precision, dataset-level"),
    ("polyp_recall_dataset", "Polyp recall, dataset-level"),
    ("loss", "Loss (0.5 cross-entropy + 0.5 soft Dice), mean over images"),
)

#: (metrics.json key, model-index metric type, name) reported in the Hub metadata.
_MODEL_INDEX_METRICS = (
    ("mean_dice", "dice", "Dice (3-class mean, background included)"),
    ("mean_iou", "mean_iou", "IoU (3-class mean)"),
    ("polyp_dice", "dice", "Polyp Dice (mean over images)"),
    ("polyp_dice_dataset", "dice", "Polyp Dice (dataset-level)"),
    ("polyp_iou", "iou", "Polyp IoU (mean over images)"),
)


def model_card(
    run_or_weights_dir: WeightsLike,
    metrics_json: str | Path | None = None,
    repo_id: str | None = None,
    decoder_concat: str | None = None,
) -> str:
    """Write the model card (``README.md`` with Hugging Face Hub metadata) of a run or a weights folder.

    Read: the weights' ``config.json`` (architecture, classes, training configuration, best validation
    epoch) and, when the weights are a run's ``best/``, the run's ``config.yaml``, ``splits.json`` and
    ``metrics.csv``; with ``metrics_json`` (written by ``polypseg evaluate``), the measured scores, which
    also go into the ``model-index`` metadata. Numbers that are not in those files are not in the card.

    Args:
        run_or_weights_dir: A training run folder, a weights folder, a ``.safetensors`` file or ``hf://``.
        metrics_json: ``metrics.json`` of ``polypseg evaluate`` on these weights.
        repo_id: The Hub repository the card is for (used in its title and usage examples).
        decoder_concat: The decoder concatenation order, for weights whose ``config.json`` does not say it;
            the card states the order and its usage examples pass it.

    Returns:
        The card's Markdown text, starting with the YAML metadata block.

    Example:
        >>> card = model_card("runs/seed", "reports/seed/metrics.json", repo_id="me/polyp-unet")  # doctest: +SKIP
    """
    sources = read_sources(run_or_weights_dir, metrics_json, decoder_concat)
    name = repo_id.split("/")[-1] if repo_id else _display_name(sources)
    split = _split_section(sources)
    return _TEMPLATE.substitute(
        front_matter=_front_matter(sources, name),
        name=name,
        summary=_summary(sources),
        boundary_note="" if sources.binary else _BOUNDARY_NOTE,
        model=_model_section(sources),
        classes=_classes_section(sources),
        usage=_usage_section(repo_id, sources),
        training=_training_section(sources),
        split=f"{split}\n" if split else "",
        evaluation=_evaluation_section(sources),
        kvasir_url=KVASIR_SEG_URL,
    )


def _display_name(sources: Sources) -> str:
    folder = sources.run_dir or sources.weights_dir
    return f"polypseg-unet-{folder.name}" if folder.name else "polypseg-unet"


def _front_matter(sources: Sources, name: str) -> str:
    eval_results = None
    evaluation = sources.evaluation
    if evaluation is not None:
        metrics = evaluation["metrics"]
        eval_results = [
            EvalResult(
                task_type="image-segmentation",
                task_name="Image Segmentation",
                dataset_type="kvasir-seg",
                dataset_name="Kvasir-SEG",
                dataset_split=str(evaluation.get("split", "test")),
                metric_type=metric_type,
                metric_name=metric_name,
                metric_value=round(float(metrics[key]), 4),
            )
            for key, metric_type, metric_name in _MODEL_INDEX_METRICS
            if key in metrics
        ] or None
    card_data = ModelCardData(
        license="other",
        license_name="kvasir-seg-terms",
        license_link=KVASIR_SEG_URL,
        datasets=["kvasir-seg"],
        tags=["image-segmentation", "medical-imaging", "polyp-segmentation", "pytorch", "safetensors", "polypseg"],
        pipeline_tag="image-segmentation",
        model_name=name,
        eval_results=eval_results,
    )
    return f"---\n{card_data.to_yaml()}\n---\n"


def _summary(sources: Sources) -> str:
    width = sources.config.get("base_channels")
    size = f" of width {width}" if width else ""
    origin = (
        f"trained on [Kvasir-SEG]({KVASIR_SEG_URL}) with polypseg and saved in its weights format "
        f"(`{WEIGHTS_NAME}` + `{CONFIG_NAME}`)"
        if sources.config.get("format") == "polypseg"
        else "in a checkpoint that polypseg loads; how it was trained is not recorded in its files"
    )
    classes = (
        "into polyp and background (the model card's binary variant: one logit per pixel, sigmoid)"
        if sources.binary
        else "into three classes (background, polyp, polyp boundary)"
    )
    return (
        f"A U-Net{size} that segments colorectal polyps in colonoscopy images {classes}: the architecture of the "
        "model card "
        f"[{CARD_REPO}](https://huggingface.co/{CARD_REPO}), {origin}.\n"
    )


def _model_section(sources: Sources) -> str:
    config = sources.config
    architecture = {key: config[key] for key in ARCHITECTURE_KEYS if key in config}
    rows = []
    if "base_channels" in architecture:
        c = int(architecture["base_channels"])
        with torch.device("meta"):
            parameters = sum(p.numel() for p in UNet(**architecture).parameters())
        rows.append(
            f"| architecture | U-Net: encoder {c}-{2 * c}-{4 * c}-{8 * c}, bottleneck {16 * c}, decoder with skip "
            f"connections, reduction head {c}->{c // 2} "
            f"({architecture.get('head_kernel_size', 3)}x{architecture.get('head_kernel_size', 3)} conv + "
            f"BatchNorm + ReLU), 1x1 classifier; {parameters:,} parameters |"
        )
    order = "[skip, upsampled]" if config.get("decoder_concat", "skip-up") == "skip-up" else "[upsampled, skip]"
    assumed = " (assumed: no config.json records it)" if sources.concat_source == "assumed" else ""
    rows.append(f"| decoder concatenation | `{config.get('decoder_concat', 'skip-up')}`: cat({order}){assumed} |")
    size = config.get("input_size", [256, 256])
    value_range = config.get("input_range", [0.0, 1.0])
    rows.append(
        f"| input | RGB, resized to {size[0]}x{size[1]}, values in [{value_range[0]}, {value_range[1]}], "
        "no normalisation |"
    )
    if sources.binary:
        threshold = config.get("threshold", 0.5)
        rows.append(f"| output | 1 logit per pixel; polyp where its sigmoid is at least {threshold} |")
    else:
        rows.append(f"| output | {config.get('num_classes', 3)} logits per pixel; the argmax is the class map |")
    rows.append(f"| files | `{WEIGHTS_NAME}` (weights), `{CONFIG_NAME}` (architecture, classes, training) |")
    return "## Model\n\n| | |\n|---|---|\n" + "\n".join(rows) + "\n"


def _classes_section(sources: Sources) -> str:
    if sources.binary:
        return (
            "## Classes\n\n"
            "| class | name | meaning |\n|---|---|---|\n"
            "| 0 | background | every pixel outside the annotated polyp |\n"
            "| 1 | polyp | annotated polyp pixels (masks binarized at 128) |\n"
        )
    width = sources.config.get("boundary_width_px", DEFAULT_BOUNDARY_WIDTH_PX)
    size = sources.config.get("input_size", [256, 256])
    return (
        "## Classes\n\n"
        "| class | name | meaning |\n|---|---|---|\n"
        "| 0 | background | every pixel outside the annotated polyp |\n"
        f"| 1 | polyp | annotated polyp pixels farther than {width} px from the polyp's edge |\n"
        f"| 2 | boundary | annotated polyp pixels within {width} px (chessboard distance, at {size[0]}x{size[1]}) "
        "of a background pixel: the inner rim of each polyp |\n\n"
        "Classes 1 and 2 together are exactly the annotated polyp mask (masks binarized at 128), so the binary "
        "polyp Dice of the polyp literature is computed from classes 1+2. The image border is not a polyp edge.\n"
    )


def _usage_section(repo_id: str | None, sources: Sources) -> str:
    reference = f"{HUB_PREFIX}{repo_id}" if repo_id else "path/to/weights"
    config = sources.config
    # A file whose config.json does not record the order needs it on every load.
    order = config["decoder_concat"] if sources.concat_source in ("argument", "assumed") else None
    flag = f" --decoder-concat {order}" if order else ""
    argument = f', decoder_concat="{order}"' if order else ""
    output = (
        "(B, 1, H, W) logits; sigmoid >= 0.5 is polyp"
        if sources.binary
        else "(B, 3, H, W) logits; argmax(1) is the class map"
    )
    text = (
        "## How to use\n\n"
        "With polypseg installed:\n\n"
        "```bash\n"
        f"polypseg predict --weights {reference}{flag} images/ --out predictions/\n```\n\n"
        "```python\nfrom polypseg import load_pretrained\n\n"
        f'model = load_pretrained("{reference}"{argument})  # torch U-Net in eval mode\n'
        f"logits = model(images)  # (B, 3, H, W) in [0, 1] -> {output}\n```\n"
    )
    if config.get("format") == "polypseg" and "base_channels" in config:
        arguments = ", ".join(f"{key}={config[key]!r}" for key in ARCHITECTURE_KEYS if key in config)
        text += (
            "\nThe tensor names are those of `polypseg.UNet`, so the model card's plain snippet works too:\n\n"
            "```python\nfrom safetensors.torch import load_file\nfrom polypseg import UNet\n\n"
            f"model = UNet({arguments})\n"
            f'model.load_state_dict(load_file("{WEIGHTS_NAME}"))\n```\n'
        )
    return text


def _training_section(sources: Sources) -> str:
    training = sources.training
    lines = ["## Training\n"]
    if training:
        name = {"adamw": "AdamW"}.get(str(training.get("optimizer")), "Adam")
        optimizer = f"{name}, learning rate {training.get('lr')}"
        if training.get("weight_decay"):
            optimizer += f", weight decay {training['weight_decay']}"
        if training.get("scheduler") == "plateau":
            schedule = (
                f"ReduceLROnPlateau on the validation loss (factor {training.get('plateau_factor')}, patience "
                f"{training.get('plateau_patience')}, min_lr {training.get('min_lr')})"
            )
        elif training.get("scheduler") == "cosine":
            schedule = f"{training.get('warmup_epochs', 0)} warm-up epoch(s), then cosine to {training.get('min_lr')}"
        elif training.get("scheduler") == "onecycle":
            schedule = f"one cycle: linear warm-up, then cosine to {training.get('min_lr')}, over the run"
        else:
            schedule = str(training.get("scheduler", "n/a"))
        if training.get("time_budget"):
            schedule += f"; time budget {training['time_budget'] / 60:.0f} min"
        if training.get("ema_decay"):
            schedule += f"; EMA of the weights (decay {training['ema_decay']})"
        table = [
            ("epochs", training.get("epochs")),
            ("batch size", training.get("batch_size")),
            ("optimizer", optimizer),
            ("schedule", schedule),
            ("loss", f"{training.get('ce_weight')} cross-entropy + {training.get('dice_weight')} soft Dice"),
            (
                "augmentation",
                _augmentation_text(training.get("augment")),
            ),
            ("image size", training.get("image_size")),
            ("boundary width", f"{training.get('boundary_width_px')} px"),
            ("precision", training.get("precision")),
            ("best epoch chosen by", training.get("monitor")),
            ("seed", training.get("seed")),
        ]
        lines.append("| setting | value |\n|---|---|")
        lines += [f"| {key} | {value} |" for key, value in table if value is not None]
        lines.append("")
    record = sources.config.get("training", {})
    validation = record.get("val_metrics") or {}
    if validation:
        epoch = record.get("epoch")
        logged = f" of {len(sources.epochs)} logged in `metrics.csv`" if sources.epochs else ""
        lines.append(
            f"Best validation epoch: {epoch} (counting from 0){logged}. Validation scores at that epoch "
            "(the split's validation images; used to choose the epoch, so optimistic):\n"
        )
        lines.append("| validation metric | value |\n|---|---|")
        lines += [f"| {key} | {_number(value)} |" for key, value in validation.items()]
        lines.append("")
    if sources.epochs:
        seconds = sum(float(row.get("seconds") or 0) for row in sources.epochs)
        lines.append(f"Training time logged in `metrics.csv`: {seconds / 60:.1f} minutes.\n")
    if training:
        lines.append(
            "<details><summary>Full training configuration</summary>\n\n```yaml\n"
            + yaml.safe_dump(training, sort_keys=False)
            + "```\n\n</details>\n"
        )
    if len(lines) == 1:
        lines.append("The weights' `config.json` records no training configuration.\n")
    return "\n".join(lines)


def _split_section(sources: Sources) -> str:
    training = sources.training
    record = sources.config.get("training", {})
    limited = f" (the first {training['max_images']} images, sorted by name)" if training.get("max_images") else ""
    if sources.splits is not None:
        counts = {key: len(sources.splits.get(key, [])) for key in ("train", "val", "test")}
        origin = "The image names of each part are in the run's `splits.json` (uploaded beside the weights)."
    elif "train_images" in record:
        counts = {"train": record.get("train_images"), "val": record.get("val_images")}
        sizes = training.get("split_sizes") or []
        if len(sizes) == 3 and float(sizes[2]) >= 1:
            counts["test"] = int(sizes[2])
        origin = f"Seeded split (seed {training.get('seed')}, sizes {sizes}), the one `polypseg evaluate` recomputes."
    else:
        return ""
    table = " | ".join(str(counts.get(key, "n/a")) for key in ("train", "val", "test"))
    return (
        f"## Data split\n\nKvasir-SEG{limited}, split once into train / validation / test. {origin}\n\n"
        f"| train | validation | test |\n|---|---|---|\n| {table} |\n"
    )


def _evaluation_section(sources: Sources) -> str:
    evaluation = sources.evaluation
    if evaluation is None:
        return (
            "## Evaluation\n\nNo test-set evaluation was supplied when this card was written "
            "(`polypseg evaluate --weights ... --out reports/` and `polypseg card --metrics reports/metrics.json` "
            "add one).\n"
        )
    metrics = evaluation["metrics"]
    split_source = str(evaluation.get("split_source", ""))
    if split_source.endswith(".json"):
        split_source = Path(split_source).name
    size = evaluation.get("image_size")
    header = (
        f"Measured with `polypseg evaluate` on the **{evaluation.get('split', 'n/a')}** split "
        f"({evaluation.get('images', 'n/a')} images; split from {split_source or 'n/a'})"
        + (f", at {size}x{size}" if size else "")
        + (", with flip test-time augmentation (`--tta`)" if evaluation.get("tta") else "")
        + ". Per-class and 3-class figures are dataset-level (pixel counts summed over all images); the binary "
        "polyp figures are given as the mean over images and dataset-level.\n"
    )
    rows = [f"| {label} | {_number(metrics[key])} |" for key, label in _EVALUATION_ROWS if key in metrics]
    return "## Evaluation\n\n" + header + "\n| metric | value |\n|---|---|\n" + "\n".join(rows) + "\n"


def _augmentation_text(augment: object) -> str:
    """How a run's ``augment`` setting reads in a model card (``True``/``False`` from older configs)."""
    preset = {True: "strong", False: "none", None: "none"}.get(augment, augment)  # type: ignore[arg-type]
    if preset == "none":
        return "none"
    return f"joint image+mask, preset `{preset}` (see polypseg.data.build_augmentation)"
