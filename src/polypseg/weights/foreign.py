"""Foreign checkpoints: a U-Net of our architecture saved by someone else, with other tensor names.

:func:`map_foreign_state_dict` matches tensors by structure, not by name or order: tensors are grouped
by module, each block is recognised by its shapes (an encoder block's first conv maps c/2 -> c, a decoder
block's 2c -> c, the bottleneck 8c -> 16c, the upsamplers are 2x2 transposed convolutions), and the width,
the number of classes and the head's kernel size are read off the tensors. A bias on a convolution
followed by BatchNorm is folded into the BatchNorm's running mean, which gives exactly the same outputs.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from polypseg.errors import WeightsError
from polypseg.model import UNet

__all__ = ["expected_shapes", "map_foreign_state_dict", "map_foreign_state_dict_with_notes"]


def expected_shapes(architecture: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a U-Net of ``architecture``, from a model on the meta device (no memory, no time)."""
    with torch.device("meta"):
        model = UNet(**architecture)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


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
    has none, and :func:`polypseg.weights.load_pretrained` takes it from its ``decoder_concat`` argument
    (default ``cat([skip, upsampled])``).

    Returns:
        The architecture arguments and a state dict with our names.

    Raises:
        WeightsError: Naming the first tensor (by the file's name) that does not fit.
    """
    architecture, state, _ = map_foreign_state_dict_with_notes(tensors, source)
    return architecture, state


def map_foreign_state_dict_with_notes(
    tensors: dict[str, torch.Tensor], source: str | Path = "weights"
) -> tuple[dict[str, int], dict[str, torch.Tensor], dict[str, list[str]]]:
    """:func:`map_foreign_state_dict`, and which biases were ``folded``, ``kept`` or set to ``zero`` (the notes)."""
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
            if architecture["head_kernel_size"] % 2 != 1:
                raise WeightsError(
                    f"{source}: tensor '{block_convs[0].first_name()}' is a {architecture['head_kernel_size']}-wide "
                    "head kernel; the U-Net's head kernel is odd"
                )
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

    expected = expected_shapes(architecture)
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
