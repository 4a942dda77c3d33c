"""The Hugging Face Hub: ``hf://`` weights, model cards, and pushing a weights folder.

* :func:`download_weights` turns ``hf://OWNER/REPO[@REVISION][/PATH]`` into a folder of the local
  Hugging Face cache (``model.safetensors`` and, if the repository has one, ``config.json``).
  :func:`polypseg.weights.resolve_weights` calls it, so every ``--weights`` and
  :func:`polypseg.load_pretrained` accept such a reference. The cache, ``HF_HUB_OFFLINE=1``,
  ``HF_ENDPOINT`` and the login token are huggingface_hub's own.
* :func:`model_card` writes a model card (``README.md`` with Hub metadata) from a run or weights folder
  and, optionally, the ``metrics.json`` of ``polypseg evaluate``. Every number in it comes from those files.
* :func:`push_to_hub` uploads ``model.safetensors``, ``config.json`` and the card in one commit.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

import torch
import yaml
from huggingface_hub import (
    _CACHED_NO_EXIST,
    CommitOperationAdd,
    EvalResult,
    HfApi,
    ModelCardData,
    constants,
    hf_hub_download,
    try_to_load_from_cache,
)
from huggingface_hub.utils import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from polypseg.classes import CLASS_NAMES, DEFAULT_BOUNDARY_WIDTH_PX
from polypseg.model import UNet
from polypseg.weights import (
    ARCHITECTURE_KEYS,
    CONFIG_NAME,
    WEIGHTS_NAME,
    WeightsError,
    inspect_weights,
    load_pretrained,
    read_model_config,
    resolve_weights,
)

__all__ = [
    "CARD_NAME",
    "HUB_PREFIX",
    "HubReference",
    "download_weights",
    "model_card",
    "parse_hub_reference",
    "push_to_hub",
]

HUB_PREFIX = "hf://"
CARD_NAME = "README.md"
#: The model card's own repository (the card's weights, with its own tensor names).
CARD_REPO = "sebastiao-teixeira/week04-polyp-segmentation-unet-multiclass"
KVASIR_SEG_URL = "https://datasets.simula.no/kvasir-seg/"

_REFERENCE = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>refs/pr/\d+|[^/]+))?(?:/(?P<path>.*))?")


@dataclass(frozen=True)
class HubReference:
    """A parsed ``hf://OWNER/REPO[@REVISION][/PATH]``: which file of which repository, at which revision."""

    repo_id: str
    revision: str | None
    filename: str  # path of the safetensors file inside the repository

    @property
    def config_filename(self) -> str:
        """The ``config.json`` beside the weights file."""
        return str(PurePosixPath(self.filename).with_name(CONFIG_NAME))


def parse_hub_reference(uri: str) -> HubReference:
    """Parse ``hf://OWNER/REPO[@REVISION][/PATH]`` (the ``hf://`` syntax of huggingface_hub, models only).

    ``PATH`` is a ``.safetensors`` file or a folder holding ``model.safetensors``; without it the weights
    are the repository's ``model.safetensors``. ``REVISION`` is a branch, tag or commit (default ``main``).

    Example:
        >>> parse_hub_reference("hf://owner/unet@v1.0/small/model.safetensors")
        HubReference(repo_id='owner/unet', revision='v1.0', filename='small/model.safetensors')
    """
    body = uri[len(HUB_PREFIX) :] if uri.startswith(HUB_PREFIX) else ""
    if body.startswith("models/"):
        body = body[len("models/") :]
    match = _REFERENCE.fullmatch(body)
    if not match or body.startswith(("datasets/", "spaces/")):
        raise WeightsError(f"{uri}: not a Hub model reference; expected {HUB_PREFIX}OWNER/REPO[@REVISION][/PATH]")
    path = (match["path"] or "").strip("/")
    if ".." in PurePosixPath(path).parts:
        raise WeightsError(f"{uri}: the path inside the repository must not contain '..'")
    filename = path if path.endswith(".safetensors") else str(PurePosixPath(path or ".") / WEIGHTS_NAME)
    revision = unquote(match["revision"]) if match["revision"] else None  # "feature%2Fx" is branch "feature/x"
    return HubReference(match["repo"], revision, filename)


# One process resolves one reference once: the weights and config of a command come from the same commit,
# and the Hub is asked once, however often the command resolves its --weights.
_downloaded: dict[tuple[str, str, str, bool], Path] = {}


def download_weights(uri: str, token: str | bool | None = None, force_download: bool = False) -> Path:
    """Download weights from the Hub into the Hugging Face cache and return their local path.

    The weights file is fetched first; ``config.json`` is then fetched from the same commit if the
    repository has one (a checkpoint without it is loaded by structure, see
    :func:`polypseg.weights.map_foreign_state_dict`). With ``HF_HUB_OFFLINE=1`` only the cache is used.

    Args:
        uri: ``hf://OWNER/REPO[@REVISION][/PATH]`` (see :func:`parse_hub_reference`).
        token: Hub token for private or gated repositories (default: ``HF_TOKEN`` or the saved login).
        force_download: Download again even if the files are cached.

    Returns:
        The cached folder holding ``model.safetensors`` (and ``config.json``), or the cached file when
        the reference names a file with another name.

    Raises:
        WeightsError: One line saying what is missing (repository, revision, file, or network and cache).

    Example:
        >>> folder = download_weights(f"hf://{CARD_REPO}")  # doctest: +SKIP
    """
    reference = parse_hub_reference(uri)
    key = (uri, constants.ENDPOINT, str(constants.HF_HUB_CACHE), constants.HF_HUB_OFFLINE)
    if not force_download and key in _downloaded and _downloaded[key].exists():
        return _downloaded[key]
    weights = Path(_download(uri, reference, reference.filename, reference.revision, token, force_download))
    # The cache stores files as snapshots/<commit>/<path in repo>: pin the config to the weights' commit.
    commit = weights.parents[len(PurePosixPath(reference.filename).parts) - 1].name
    cached_config = try_to_load_from_cache(reference.repo_id, reference.config_filename, revision=commit)
    if cached_config is not _CACHED_NO_EXIST:
        try:
            _download(uri, reference, reference.config_filename, commit, token, force_download)
        except _NoSuchFile:
            pass
    result = weights.parent if weights.name == WEIGHTS_NAME else weights
    _downloaded[key] = result
    return result


class _NoSuchFile(WeightsError):
    """The file is not in the repository (or, offline, not in the cache)."""


def _download(
    uri: str, reference: HubReference, filename: str, revision: str | None, token: str | bool | None, force: bool
) -> str:
    from polypseg import __version__

    try:
        return hf_hub_download(
            reference.repo_id,
            filename,
            revision=revision,
            token=token,
            force_download=force,
            library_name="polypseg",
            library_version=__version__,
        )
    except LocalEntryNotFoundError:
        where = (
            "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"the Hub ({constants.ENDPOINT}) cannot be reached"
        )
        raise _NoSuchFile(
            f"{uri}: '{filename}' is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {where}"
        ) from None
    except EntryNotFoundError:
        raise _NoSuchFile(f"{uri}: the repository {reference.repo_id} has no file '{filename}'") from None
    except RevisionNotFoundError:
        raise WeightsError(f"{uri}: revision '{revision}' not found in {reference.repo_id}") from None
    except RepositoryNotFoundError:
        raise WeightsError(
            f"{uri}: repository {reference.repo_id} not found on {constants.ENDPOINT}, or it is private or gated "
            "(log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    except (HfHubHTTPError, OSError) as error:
        raise WeightsError(f"{uri}: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# --------------------------------------------------------------------------------------------------
# Model card


@dataclass
class _Sources:
    """What a card is written from: the weights' config.json and, for a run's best/, the run's files."""

    weights_dir: Path
    config: dict[str, Any]
    run_dir: Path | None
    training: dict[str, Any]
    splits: dict[str, list[str]] | None
    epochs: list[dict[str, str]]
    evaluation: dict[str, Any] | None
    #: Where the decoder concatenation order came from (see :class:`polypseg.weights.WeightsInfo`).
    concat_source: str = "config.json"

    @property
    def binary(self) -> bool:
        """The binary variant (one output channel)."""
        return self.config.get("num_classes") == 1


def _read_sources(
    run_or_weights: str | Path, metrics_json: str | Path | None, decoder_concat: str | None = None
) -> _Sources:
    folder = resolve_weights(run_or_weights)
    weights_dir = folder if folder.is_dir() else folder.parent
    weights_file = folder / WEIGHTS_NAME if folder.is_dir() else folder
    if not weights_file.is_file():
        raise WeightsError(f"{weights_file}: weights file not found")
    config = read_model_config(folder)
    # What the tensors say (task, classes; a foreign file has no config.json to say it) and the order used.
    info = inspect_weights(folder, decoder_concat)
    config = {"num_classes": info.architecture["num_classes"], **config, "task": info.task}
    config["decoder_concat"] = info.architecture["decoder_concat"]
    run_dir = (
        weights_dir.parent if weights_dir.name == "best" and (weights_dir.parent / "config.yaml").exists() else None
    )
    training = dict(config.get("training", {}).get("config") or {})
    if not training and run_dir is not None:
        training = _read_yaml(run_dir / "config.yaml")
    splits = None
    if run_dir is not None and (run_dir / "splits.json").exists():
        splits = _read_json(run_dir / "splits.json")
    epochs: list[dict[str, str]] = []
    if run_dir is not None and (run_dir / "metrics.csv").exists():
        with (run_dir / "metrics.csv").open(newline="") as handle:
            epochs = list(csv.DictReader(handle))
    evaluation = _read_json(Path(metrics_json)) if metrics_json is not None else None
    if evaluation is not None and not isinstance(evaluation.get("metrics"), dict):
        raise ValueError(f"{metrics_json}: not a metrics.json of `polypseg evaluate` (no 'metrics' object)")
    return _Sources(weights_dir, config, run_dir, training, splits, epochs, evaluation, info.concat_source)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read JSON ({_one_line(error)})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: must hold a JSON object")
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        value = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read YAML ({_one_line(error)})") from None
    return value if isinstance(value, dict) else {}


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

_CITATIONS = """```bibtex
@inproceedings{jha2020kvasir,
  title     = {Kvasir-SEG: A Segmented Polyp Dataset},
  author    = {Jha, Debesh and Smedsrud, Pia H. and Riegler, Michael A. and Halvorsen, P{\\aa}l and
               de Lange, Thomas and Johansen, Dag and Johansen, H{\\aa}vard D.},
  booktitle = {MultiMedia Modeling (MMM 2020)},
  series    = {LNCS},
  volume    = {11962},
  pages     = {451--462},
  publisher = {Springer},
  year      = {2020},
  doi       = {10.1007/978-3-030-37734-2_37}
}

@inproceedings{ronneberger2015unet,
  title     = {U-Net: Convolutional Networks for Biomedical Image Segmentation},
  author    = {Ronneberger, Olaf and Fischer, Philipp and Brox, Thomas},
  booktitle = {Medical Image Computing and Computer-Assisted Intervention (MICCAI 2015)},
  series    = {LNCS},
  volume    = {9351},
  pages     = {234--241},
  publisher = {Springer},
  year      = {2015},
  doi       = {10.1007/978-3-319-24574-4_28}
}
```"""


def model_card(
    run_or_weights_dir: str | Path,
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
    sources = _read_sources(run_or_weights_dir, metrics_json, decoder_concat)
    name = repo_id.split("/")[-1] if repo_id else _display_name(sources)
    sections = [
        _front_matter(sources, name),
        f"# {name}\n",
        _summary(sources),
        _intended_use(sources.binary),
        _model_section(sources),
        _classes_section(sources),
        _usage_section(repo_id, sources),
        _training_section(sources),
        _split_section(sources),
        _evaluation_section(sources),
        "## Citation\n\nIf you use these weights, cite the dataset (its terms require it) and the architecture:\n\n"
        + _CITATIONS
        + "\n",
        "## License\n\nThe code that trained these weights (polypseg) is MIT-licensed. The weights were trained "
        f"on Kvasir-SEG, whose [terms]({KVASIR_SEG_URL}) allow research and educational use only and require "
        "citing the dataset paper; the same terms apply to the weights.\n",
    ]
    return "\n".join(section for section in sections if section)


def _display_name(sources: _Sources) -> str:
    folder = sources.run_dir or sources.weights_dir
    return f"polypseg-unet-{folder.name}" if folder.name else "polypseg-unet"


def _front_matter(sources: _Sources, name: str) -> str:
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


def _summary(sources: _Sources) -> str:
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


def _intended_use(binary: bool = False) -> str:
    return (
        "## Intended use and limitations\n\n"
        "**Research and education only. This model is not a medical device, has not been clinically "
        "validated, and must not be used for diagnosis, screening or any decision about a patient.**\n\n"
        "- Intended for research on polyp segmentation: a baseline to compare against, a starting point for "
        "fine-tuning, and for building and testing tools.\n"
        "- Trained and evaluated on Kvasir-SEG only: still images from colonoscopies, every one of which "
        "shows at least one polyp. How it behaves on frames without polyps, on video, on other endoscopes, "
        "other hospitals or other patient populations has not been measured here.\n"
        "- Images are resized to the training resolution (see below) before segmentation; very small polyps "
        "can be lost at that size.\n"
        + (
            ""
            if binary
            else "- The boundary class is a convention of polypseg derived from the annotated masks, not an "
            "annotation of its own.\n"
        )
    )


def _model_section(sources: _Sources) -> str:
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


def _classes_section(sources: _Sources) -> str:
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


def _usage_section(repo_id: str | None, sources: _Sources) -> str:
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


def _training_section(sources: _Sources) -> str:
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


def _split_section(sources: _Sources) -> str:
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


def _evaluation_section(sources: _Sources) -> str:
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


# --------------------------------------------------------------------------------------------------
# Pushing


def push_to_hub(
    weights: str | Path,
    repo_id: str,
    metrics_json: str | Path | None = None,
    card: str | Path | None = None,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    decoder_concat: str | None = None,
) -> str:
    """Upload weights to a Hub model repository in one commit: weights, ``config.json``, model card.

    The weights are checked to load first. The files are uploaded as they are on disk, plus the run's
    ``splits.json`` when the weights are a run's ``best/``; the card (``README.md``) is generated by
    :func:`model_card` unless ``card`` names a file to upload instead. Nothing local is changed.

    Args:
        weights: A weights folder, a ``.safetensors`` file or a training run folder (its ``best/``).
        repo_id: ``OWNER/REPO`` (created if it does not exist).
        metrics_json: ``metrics.json`` of ``polypseg evaluate`` for the generated card.
        card: A Markdown file to upload as ``README.md`` instead of the generated card.
        private: Create the repository as private (an existing repository keeps its visibility).
        revision: Branch to commit to (created from ``main`` if missing); default ``main``.
        token: Hub token with write access (default: ``HF_TOKEN`` or the saved login).
        commit_message: Default: "Upload polypseg U-Net weights".
        decoder_concat: The decoder concatenation order for weights whose ``config.json`` does not say it
            (the generated card states it and passes it in its usage examples).

    Returns:
        The URL of the commit.
    """
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise ValueError(f"--repo must be OWNER/REPO, got {repo_id!r}")
    folder = resolve_weights(weights)
    weights_path = folder / WEIGHTS_NAME if folder.is_dir() else folder
    config_path = weights_path.parent / CONFIG_NAME
    load_pretrained(folder, decoder_concat=decoder_concat)
    if card is not None:
        card_text = Path(card).read_text(encoding="utf-8")
    else:
        card_text = model_card(folder, metrics_json, repo_id=repo_id, decoder_concat=decoder_concat)
    operations = [CommitOperationAdd(WEIGHTS_NAME, str(weights_path))]
    if config_path.exists():
        operations.append(CommitOperationAdd(CONFIG_NAME, str(config_path)))
    splits_path = weights_path.parent.parent / "splits.json"
    if weights_path.parent.name == "best" and splits_path.exists():
        operations.append(CommitOperationAdd("splits.json", str(splits_path)))
    operations.append(CommitOperationAdd(CARD_NAME, card_text.encode("utf-8")))
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision not in (None, constants.DEFAULT_REVISION):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    commit = api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message or "Upload polypseg U-Net weights",
        revision=revision,
    )
    return str(commit.commit_url)


def _augmentation_text(augment: object) -> str:
    """How a run's ``augment`` setting reads in a model card (``True``/``False`` from older configs)."""
    preset = {True: "strong", False: "none", None: "none"}.get(augment, augment)  # type: ignore[arg-type]
    if preset == "none":
        return "none"
    return f"joint image+mask, preset `{preset}` (see polypseg.data.build_augmentation)"
