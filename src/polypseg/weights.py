"""Weights on disk: ``model.safetensors`` + ``config.json`` in one folder, and loading them back.

* :func:`save_pretrained` writes our layout (atomically, file by file).
* :func:`load_pretrained` rebuilds a :class:`~polypseg.model.UNet` from such a folder, from a bare
  ``.safetensors`` file, from the bundled model (no argument), or from a checkpoint of the same
  architecture written by someone else with other tensor names (matched by structure, see
  :func:`map_foreign_state_dict`). Only safetensors are read: nothing is ever unpickled.
* :func:`inspect_weights` says what was read off a file: task, width, classes, head kernel, biases, and
  the decoder's concatenation order.

Either member of the card's family loads: the 3-class model and its binary sibling (one output channel).
What the tensors cannot tell is the decoder's concatenation order (``[skip, upsampled]`` or
``[upsampled, skip]``: the shapes are the same). polypseg's own ``config.json`` records it
(``decoder_concat``); for a file without one, ``skip-up`` is assumed and one line on stderr (logger
``polypseg.weights``, level WARNING) says so and how to choose the other (``decoder_concat="up-skip"``,
``--decoder-concat up-skip``); ``polypseg inspect WEIGHTS --data DIR`` scores both orders on labelled images.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from polypseg.classes import DEFAULT_BOUNDARY_WIDTH_PX, TASKS, class_names_for, task_of
from polypseg.io import atomic_save, atomic_write_text
from polypseg.model import DECODER_CONCATS, UNet

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "WeightsError",
    "WeightsInfo",
    "bundled_examples_dir",
    "bundled_weights_dir",
    "inspect_weights",
    "load_pretrained",
    "map_foreign_state_dict",
    "read_model_config",
    "resolve_weights",
    "save_pretrained",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
ARCHITECTURE_KEYS = ("in_channels", "num_classes", "base_channels", "head_kernel_size", "decoder_concat")
logger = logging.getLogger(__name__)
#: Bounds of the integers of ``config.json`` (inclusive); ``input_size`` sides are at most :data:`MAX_INPUT_SIZE`.
CONFIG_BOUNDS = {
    "in_channels": (1, 64),
    "num_classes": (1, 256),
    "base_channels": (2, 256),
    "head_kernel_size": (1, 7),
    "boundary_width_px": (0, 64),
}
MAX_INPUT_SIZE = 2048


class WeightsError(ValueError):
    """Weights that cannot be loaded; the message names the file and the first tensor that does not fit."""


def bundled_weights_dir() -> Path:
    """Folder of the model that ships with polypseg (a small U-Net trained on Kvasir-SEG)."""
    return Path(str(resources.files("polypseg") / "assets" / "model"))


def bundled_examples_dir() -> Path:
    """Folder of the example images that ship with polypseg (from the Kvasir-SEG test split)."""
    return Path(str(resources.files("polypseg") / "assets" / "examples"))


def save_pretrained(
    model: UNet,
    folder: str | Path,
    metadata: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``folder``.

    Args:
        model: The model to save.
        folder: Output folder (created).
        metadata: Extra entries for ``config.json`` (training config, metrics, ...).
        dtype: Floating dtype to store (float16 halves the size; loading converts back to float32).

    Returns:
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        key: (value.to(dtype) if value.is_floating_point() else value).detach().cpu().contiguous()
        for key, value in model.state_dict().items()
    }
    config: dict[str, Any] = {
        "architecture": "UNet",
        **model.config,
        "task": task_of(model.num_classes),
        "class_names": list(class_names_for(model.num_classes)),
        "boundary_width_px": DEFAULT_BOUNDARY_WIDTH_PX,
        "input_size": [256, 256],
        "input_range": [0.0, 1.0],
        "format": "polypseg",
    }
    config.update(metadata or {})
    try:
        atomic_save(folder / WEIGHTS_NAME, lambda path: save_file(state, str(path), metadata={"format": "pt"}))
    except SafetensorError as error:  # e.g. the disk is full
        raise OSError(f"{folder / WEIGHTS_NAME}: cannot write weights ({' '.join(str(error).split())})") from None
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2, default=str) + "\n")
    return folder


def resolve_weights(path: str | Path | None) -> Path:
    """Turn a user's ``--weights`` into a weights folder or file.

    ``None`` is the bundled model; a training run folder resolves to its ``best/``;
    ``hf://OWNER/REPO[@REVISION]`` is downloaded into the Hugging Face cache (see :mod:`polypseg.hub`).
    """
    if path is None:
        return bundled_weights_dir()
    if isinstance(path, str) and path.startswith("hf://"):
        from polypseg.hub import download_weights  # hub stands on this module: imported only when needed

        return download_weights(path)
    path = Path(path)
    if path.is_dir() and not (path / WEIGHTS_NAME).exists() and (path / "best" / WEIGHTS_NAME).exists():
        return path / "best"
    return path


def read_model_config(path: str | Path | None = None) -> dict[str, Any]:
    """The ``config.json`` beside the weights (empty dict if there is none)."""
    path = resolve_weights(path)
    config_path = path / CONFIG_NAME if path.is_dir() else path.parent / CONFIG_NAME
    if not config_path.exists():
        return {}
    try:
        if config_path.stat().st_size > 10_000_000:
            raise ValueError("larger than 10 MB")
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON or not UTF-8
        raise WeightsError(f"{config_path}: not valid JSON ({' '.join(str(error).split())[:200]})") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{config_path}: must hold a JSON object")

    def is_int(value: Any, minimum: int, maximum: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= maximum

    # Every number is bounded: a hostile config.json must not build a huge model or run for ever.
    for key, (minimum, maximum) in CONFIG_BOUNDS.items():
        if key in config and not is_int(config[key], minimum, maximum):
            raise WeightsError(
                f"{config_path}: '{key}' must be an integer from {minimum} to {maximum}, got {config[key]!r}"
            )
    if config.get("base_channels", 2) % 2:
        raise WeightsError(f"{config_path}: 'base_channels' must be even, got {config['base_channels']!r}")
    if config.get("head_kernel_size", 1) % 2 != 1:
        raise WeightsError(f"{config_path}: 'head_kernel_size' must be odd, got {config['head_kernel_size']!r}")
    for key, allowed in (("decoder_concat", DECODER_CONCATS), ("task", TASKS)):
        if key in config and config[key] not in allowed:
            raise WeightsError(f"{config_path}: '{key}' must be one of {', '.join(allowed)}, got {config[key]!r}")
    size = config.get("input_size", [16, 16])
    if not (
        isinstance(size, list) and len(size) == 2 and all(is_int(v, 16, MAX_INPUT_SIZE) and v % 16 == 0 for v in size)
    ):
        raise WeightsError(
            f"{config_path}: 'input_size' must be [height, width], multiples of 16 from 16 to {MAX_INPUT_SIZE}, "
            f"got {size!r}"
        )
    return config


def _expected_shapes(architecture: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a U-Net of ``architecture``, from a model on the meta device (no memory, no time)."""
    with torch.device("meta"):
        model = UNet(**architecture)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _check_shapes(
    shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], weights_path: Path, origin: str = ""
) -> None:
    for key, shape in expected.items():
        if key not in shapes:
            raise WeightsError(f"{weights_path}: tensor '{key}' is missing")
        if shapes[key] != shape:
            raise WeightsError(
                f"{weights_path}: tensor '{key}' has shape {shapes[key]}, the model{origin} needs {shape}"
            )
    extra = sorted(set(shapes) - set(expected))
    if extra:
        raise WeightsError(f"{weights_path}: tensor '{extra[0]}' does not belong to the model")


@dataclass
class WeightsInfo:
    """What was read off a weights file (:func:`inspect_weights`).

    Attributes:
        path: The ``.safetensors`` file.
        layout: ``"polypseg"`` (our tensor names with a ``config.json``) or ``"foreign"`` (mapped by structure).
        architecture: The :class:`~polypseg.model.UNet` arguments, ``decoder_concat`` included.
        concat_source: Where ``decoder_concat`` came from: ``"argument"``, ``"config.json"``, ``"default"``
            (a polypseg ``config.json`` older than the setting: always ``skip-up``) or ``"assumed"`` (no
            ``config.json`` says it; the tensors cannot).
        folded_biases: Convolution biases of the file followed by a BatchNorm, folded into its running mean.
        kept_biases: Biases of the file used as they are (upsamplers, classifier).
        zero_biases: Our bias tensors the file lacks, set to zero.
    """

    path: Path
    layout: str
    architecture: dict[str, Any]
    concat_source: str
    folded_biases: list[str]
    kept_biases: list[str]
    zero_biases: list[str]

    @property
    def task(self) -> str:
        """``"binary"`` (one output channel) or ``"multiclass"``."""
        return task_of(int(self.architecture["num_classes"]))


def load_pretrained(
    path: str | Path | None = None,
    map_location: str | torch.device = "cpu",
    decoder_concat: str | None = None,
) -> UNet:
    """Rebuild a U-Net with its weights, in eval mode.

    Args:
        path: A weights folder (``model.safetensors`` + ``config.json``), a ``.safetensors`` file, a
            training run folder (its ``best/``), ``hf://OWNER/REPO[@REVISION]`` on the Hugging Face Hub,
            or ``None`` for the bundled model.
        map_location: Device to load onto.
        decoder_concat: The decoder's concatenation order, ``"skip-up"`` (``cat([skip, upsampled])``) or
            ``"up-skip"``; ``None``: the one ``config.json`` records, else ``"skip-up"``, and a file without
            a ``config.json`` that says it gets one line on stderr (logger ``polypseg.weights``) naming the
            order assumed and how to choose the other.

    Raises:
        WeightsError: The file is missing, is not safetensors, or its tensors do not fit a U-Net.

    Example:
        >>> model = load_pretrained()  # the bundled model
        >>> model.num_classes
        3
    """
    model, info = _load(path, map_location, decoder_concat)
    if info.concat_source == "assumed" and str(info.path) not in _ASSUMED_NOTICES:
        _ASSUMED_NOTICES.add(str(info.path))
        logger.warning(
            "%s: no config.json says the decoder's concatenation order; assuming skip-up (cat([skip, upsampled])). "
            "If the checkpoint's code concatenates [upsampled, skip], pass --decoder-concat up-skip "
            '(Python: decoder_concat="up-skip"); `polypseg inspect WEIGHTS --data DIR` tells which fits',
            info.path,
        )
    return model


#: Files whose assumed concatenation order has been reported in this process (one line per file).
_ASSUMED_NOTICES: set[str] = set()


def inspect_weights(path: str | Path | None = None, decoder_concat: str | None = None) -> WeightsInfo:
    """Load weights (as :func:`load_pretrained` does) and say what was read off them.

    Example:
        >>> info = inspect_weights()  # the bundled model
        >>> info.task, info.architecture["decoder_concat"], info.layout
        ('multiclass', 'skip-up', 'polypseg')
    """
    return _load(path, "cpu", decoder_concat)[1]


def _load(
    path: str | Path | None, map_location: str | torch.device, decoder_concat: str | None
) -> tuple[UNet, WeightsInfo]:
    if decoder_concat is not None and decoder_concat not in DECODER_CONCATS:
        raise ValueError(f"decoder_concat must be one of {', '.join(DECODER_CONCATS)}, got {decoder_concat!r}")
    path = resolve_weights(path)
    weights_path = path / WEIGHTS_NAME if path.is_dir() else path
    if not weights_path.exists():
        raise WeightsError(f"{weights_path}: weights file not found")
    try:  # the header alone: shapes are checked before any tensor is read or any model is built
        with safe_open(str(weights_path), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{weights_path}: not a readable safetensors file ({error})") from None
    config = read_model_config(path)
    architecture = {key: config[key] for key in ARCHITECTURE_KEYS if key in config and key != "decoder_concat"}
    native = bool(architecture) and _is_native(shapes)
    if native:
        config_name = weights_path.parent / CONFIG_NAME
        _check_shapes(shapes, _expected_shapes(architecture), weights_path, f" of {config_name}")
    try:
        tensors = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{weights_path}: not a readable safetensors file ({error})") from None
    notes: dict[str, list[str]] = {"folded": [], "kept": [], "zero": []}
    if native:
        notes["kept"] = sorted(key for key in tensors if key.endswith(".bias") and not _is_batchnorm(key, tensors))
    else:
        architecture, tensors, notes = _map_foreign(tensors, source=weights_path)
        _check_shapes(
            {key: tuple(value.shape) for key, value in tensors.items()}, _expected_shapes(architecture), weights_path
        )
    if decoder_concat is not None:
        source = "argument"
    elif "decoder_concat" in config:
        source, decoder_concat = "config.json", config["decoder_concat"]
    else:
        source = "default" if config.get("format") == "polypseg" else "assumed"
        decoder_concat = "skip-up"
    architecture["decoder_concat"] = decoder_concat
    model = UNet(**architecture)
    expected = model.state_dict()
    model.load_state_dict({key: value.to(expected[key].dtype) for key, value in tensors.items()})
    info = WeightsInfo(
        weights_path,
        "polypseg" if native else "foreign",
        model.config,
        source,
        notes["folded"],
        notes["kept"],
        notes["zero"],
    )
    return model.to(map_location).eval(), info


def _is_batchnorm(bias_name: str, tensors: dict[str, Any]) -> bool:
    return f"{bias_name.rpartition('.')[0]}.running_mean" in tensors


def _is_native(tensors: dict[str, Any]) -> bool:
    return "classifier.weight" in tensors and "encoder.0.0.weight" in tensors


# --------------------------------------------------------------------------------------------------
# Foreign checkpoints: same architecture, other tensor names.


@dataclass
class _Module:
    prefix: str
    tensors: dict[str, tuple[str, torch.Tensor]]  # leaf name -> (full name, tensor)

    def get(self, leaf: str) -> torch.Tensor | None:
        item = self.tensors.get(leaf)
        return None if item is None else item[1]

    @property
    def kind(self) -> str:
        weight = self.get("weight")
        if "running_mean" in self.tensors:
            return "bn"
        if weight is not None and weight.dim() == 4:
            return "conv" if weight.shape[2] == weight.shape[3] and weight.shape[2] != 2 else "maybe_up"
        return "other"

    def first_name(self) -> str:
        return min(name for name, _ in self.tensors.values())


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _split_name(name: str) -> tuple[str, str]:
    prefix, _, leaf = name.rpartition(".")
    return prefix, leaf


def map_foreign_state_dict(
    tensors: dict[str, torch.Tensor], source: str | Path = "weights"
) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """Map a same-architecture checkpoint with other tensor names onto our names, by structure.

    Neither names nor the order of tensors are trusted (safetensors stores names sorted). Tensors are
    grouped by module (name minus the last component) and modules into blocks by their parent (a
    convolution list and a BatchNorm list side by side are merged into their common parent). Roles come
    from shapes: the classifier is the 1x1 convolution with the narrowest input (``c/2``); the block whose
    first conv maps ``in -> c`` is encoder stage 0, which fixes the base width ``c`` and the input
    channels; then ``c/2 -> c`` blocks are encoder stages, ``8c -> 16c`` the bottleneck, ``2c -> c``
    decoder stages, the single conv ``c -> c/2`` with its BatchNorm the reduction head (any kernel size),
    and (2c, c, 2, 2) kernels the transposed-conv upsamplers. Inside a block, convolutions and
    BatchNorms are paired in natural name order (conv i with BatchNorm i). A bias on a convolution
    followed by BatchNorm is folded into the BatchNorm's running mean, which gives exactly the same
    outputs; a missing upsampler or classifier bias is zero.

    The classifier may have any number of output channels: three for the card's model, one for its
    binary sibling. Shapes cannot tell the order of the decoder's concatenation: the architecture returned
    has none, and :func:`load_pretrained` takes it from its ``decoder_concat`` argument (default
    ``cat([skip, upsampled])``).

    Returns:
        The architecture arguments and a state dict with our names.

    Raises:
        WeightsError: Naming the first tensor (by the file's name) that does not fit.
    """
    architecture, state, _ = _map_foreign(tensors, source)
    return architecture, state


def _map_foreign(
    tensors: dict[str, torch.Tensor], source: str | Path
) -> tuple[dict[str, int], dict[str, torch.Tensor], dict[str, list[str]]]:
    """:func:`map_foreign_state_dict`, and which biases were folded, kept or set to zero (``notes``)."""
    notes: dict[str, list[str]] = {"folded": [], "kept": [], "zero": []}
    modules: dict[str, _Module] = {}
    for name in sorted(tensors, key=_natural_key):
        prefix, leaf = _split_name(name)
        modules.setdefault(prefix, _Module(prefix, {})).tensors[leaf] = (name, tensors[name])

    convs: list[_Module] = []
    norms: list[_Module] = []
    upsamplers: list[_Module] = []
    for module in modules.values():
        kind = module.kind
        if kind == "other":
            raise WeightsError(f"{source}: tensor '{module.first_name()}' is not part of a U-Net")
        {"conv": convs, "bn": norms, "maybe_up": upsamplers}[kind].append(module)

    pointwise = sorted((m for m in convs if _kernel(m) == 1), key=lambda m: _conv_io(m)[0])
    if not pointwise:
        raise WeightsError(f"{source}: no 1x1 classifier convolution found")
    classifier = pointwise[0]
    convs.remove(classifier)
    blocks = _group_blocks(convs, norms)

    architecture, roles = _infer_roles(blocks, source)
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for prefix, (block_convs, block_norms) in blocks.items():
        role = roles[prefix]
        if role == "head":
            architecture["head_kernel_size"] = _kernel(block_convs[0])
        for index, (conv, bn) in enumerate(zip(block_convs, block_norms, strict=True)):
            if role == "head":
                conv_name, bn_name = "head.0", "head.1"
            else:
                conv_name, bn_name = f"{role}.{3 * index}", f"{role}.{3 * index + 1}"
            _put_conv_bn(state, origin, conv, bn, conv_name, bn_name, source, notes)

    upsamplers.sort(key=lambda m: -_conv_io(m)[1])  # a transposed conv's weight is (in, out, 2, 2)
    if len(upsamplers) != 4:
        name = upsamplers[4].first_name() if len(upsamplers) > 4 else "(none)"
        raise WeightsError(f"{source}: expected 4 transposed-conv upsamplers, found {len(upsamplers)} ({name})")
    for j, module in enumerate(upsamplers):
        _put_with_bias(state, origin, module, f"upsample.{j}", out_axis=1, notes=notes)
    _put_with_bias(state, origin, classifier, "classifier", out_axis=0, notes=notes)
    architecture["num_classes"] = _conv_io(classifier)[1]

    expected = _expected_shapes(architecture)
    for key, shape in expected.items():
        if key in state and tuple(state[key].shape) != shape:
            raise WeightsError(
                f"{source}: tensor '{origin[key]}' has shape {tuple(state[key].shape)}, but at its place "
                f"({key}) a U-Net of width {architecture['base_channels']} needs {shape}"
            )
    return architecture, state, notes


def _kernel(module: _Module) -> int:
    weight = module.get("weight")
    assert weight is not None
    return int(weight.shape[-1])


def _conv_io(module: _Module) -> tuple[int, int]:
    weight = module.get("weight")
    assert weight is not None
    return int(weight.shape[1]), int(weight.shape[0])


def _group_blocks(convs: list[_Module], norms: list[_Module]) -> dict[str, tuple[list[_Module], list[_Module]]]:
    """Group convs and BatchNorms by parent; a parent holding only one of the two is merged into its parent."""
    groups: dict[str, tuple[list[_Module], list[_Module]]] = defaultdict(lambda: ([], []))
    for module in convs:
        groups[_split_name(module.prefix)[0]][0].append(module)
    for module in norms:
        groups[_split_name(module.prefix)[0]][1].append(module)
    merged: dict[str, tuple[list[_Module], list[_Module]]] = defaultdict(lambda: ([], []))
    for parent, (group_convs, group_norms) in groups.items():
        key = parent if group_convs and group_norms else _split_name(parent)[0]
        merged[key][0].extend(group_convs)
        merged[key][1].extend(group_norms)
    return {
        key: (sorted(c, key=lambda m: _natural_key(m.prefix)), sorted(n, key=lambda m: _natural_key(m.prefix)))
        for key, (c, n) in sorted(merged.items(), key=lambda item: _natural_key(item[0]))
    }


def _infer_roles(
    blocks: dict[str, tuple[list[_Module], list[_Module]]], source: str | Path
) -> tuple[dict[str, int], dict[str, str]]:
    """Find the entry block (in -> c) for which every block gets exactly one role."""
    for convs, norms in blocks.values():
        if not convs:
            raise WeightsError(f"{source}: tensor '{norms[0].first_name()}' is a BatchNorm without a convolution")
    first = {prefix: _conv_io(convs[0]) for prefix, (convs, _) in blocks.items()}
    failure = ""
    for in_channels, base in sorted(set(first.values()), key=lambda io: io[1]):
        if base % 2:
            continue
        widths = [base * 2**i for i in range(4)]
        by_io = {(in_channels, base): "encoder.0", (widths[3], widths[3] * 2): "bottleneck", (base, base // 2): "head"}
        by_io.update({(widths[i - 1], widths[i]): f"encoder.{i}" for i in range(1, 4)})
        by_io.update({(w * 2, w): f"decoder.{j}" for j, w in enumerate(reversed(widths))})
        roles = {prefix: by_io.get(io, "") for prefix, io in first.items()}
        unfit = [
            prefix
            for prefix, role in roles.items()
            if not role
            or len(blocks[prefix][0]) != (1 if role == "head" else 2)
            or len(blocks[prefix][1]) != len(blocks[prefix][0])
        ]
        if not unfit and sorted(roles.values()) == sorted(by_io.values()):
            return {"in_channels": in_channels, "base_channels": base, "head_kernel_size": 3}, roles
        if unfit and not failure:
            failure = blocks[unfit[0]][0][0].first_name()
    detail = f"; tensor '{failure}' does not fit any block" if failure else ""
    raise WeightsError(f"{source}: the tensors do not form a U-Net of the card's architecture{detail}")


def _put_with_bias(
    state: dict[str, torch.Tensor],
    origin: dict[str, str],
    module: _Module,
    name: str,
    out_axis: int,
    notes: dict[str, list[str]],
) -> None:
    weight = module.get("weight")
    assert weight is not None
    bias = module.get("bias")
    if bias is not None:
        notes["kept"].append(module.tensors["bias"][0])
    else:
        notes["zero"].append(f"{name}.bias")
    state[f"{name}.weight"] = weight
    state[f"{name}.bias"] = bias if bias is not None else torch.zeros(weight.shape[out_axis], dtype=weight.dtype)
    origin[f"{name}.weight"] = origin[f"{name}.bias"] = module.tensors["weight"][0]


def _put_conv_bn(
    state: dict[str, torch.Tensor],
    origin: dict[str, str],
    conv: _Module,
    bn: _Module,
    conv_name: str,
    bn_name: str,
    source: str | Path,
    notes: dict[str, list[str]],
) -> None:
    weight = conv.get("weight")
    assert weight is not None
    out_channels = weight.shape[0]
    bn_tensors = {leaf: bn.get(leaf) for leaf in ("weight", "bias", "running_mean", "running_var")}
    for leaf, value in bn_tensors.items():
        if value is None or value.shape != (out_channels,):
            raise WeightsError(f"{source}: tensor '{bn.prefix}.{leaf}' does not fit after '{conv.prefix}.weight'")
    running_mean = bn_tensors["running_mean"]
    conv_bias = conv.get("bias")
    if conv_bias is not None:
        # BN(x + b) with mean m equals BN(x) with mean m - b, in training and in eval mode.
        running_mean = running_mean - conv_bias.to(running_mean.dtype)  # type: ignore[operator]
        notes["folded"].append(conv.tensors["bias"][0])
    origin[f"{conv_name}.weight"] = conv.tensors["weight"][0]
    for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        origin[f"{bn_name}.{leaf}"] = f"{bn.prefix}.{leaf}"
    state[f"{conv_name}.weight"] = weight
    state[f"{bn_name}.weight"] = bn_tensors["weight"]  # type: ignore[assignment]
    state[f"{bn_name}.bias"] = bn_tensors["bias"]  # type: ignore[assignment]
    state[f"{bn_name}.running_mean"] = running_mean  # type: ignore[assignment]
    state[f"{bn_name}.running_var"] = bn_tensors["running_var"]  # type: ignore[assignment]
    tracked = bn.get("num_batches_tracked")
    state[f"{bn_name}.num_batches_tracked"] = tracked if tracked is not None else torch.tensor(0)
