"""Foreign checkpoints (``polypseg.weights.foreign``): the same U-Net under other names, either decoder
concatenation order, and networks that do not fit."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

import polypseg
from helpers import eval_outputs, random_images, randomise
from polypseg.model import UNet
from polypseg.weights import WeightsError, load_pretrained, map_foreign_state_dict, save_pretrained

BASE = 8


# --- foreign checkpoints: the same architecture under other names -----------------------------------


class ForeignDoubleConv(nn.Module):
    """``block.{0,1,3,4}``: conv, BN, ReLU, conv, BN, ReLU (as many U-Net repositories write it)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ForeignBottleneck(nn.Module):
    """``net.{0..5}`` naming."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool) -> None:
        super().__init__()
        self.net = ForeignDoubleConv(in_channels, out_channels, bias).block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ForeignDecoderBlock(nn.Module):
    """``conv1``/``bn1``/``conv2``/``bn2`` naming, BatchNorms registered before their convolutions."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(x)))


class ForeignUNet(nn.Module):
    """The card's U-Net written independently: other names, other registration order.

    ``enc1``, ``down2..4`` (max-pool + double conv), ``bottleneck.net``, ``ups.{0..3}`` (``ups.0`` is the
    highest resolution, the reverse of ours), ``dec1..4`` (``dec1`` highest resolution), ``out.conv`` /
    ``out.norm`` reduction head and a 1x1 ``final`` classifier, registered first. ``concat`` is the order
    of each decoder block's concatenation: ``"skip-up"`` (polypseg's) or ``"up-skip"``.
    """

    def __init__(
        self,
        base: int = BASE,
        num_classes: int = 3,
        bias: bool = True,
        head_kernel_size: int = 3,
        concat: str = "skip-up",
    ) -> None:
        super().__init__()
        c = base
        self.concat = concat
        self.final = nn.Conv2d(c // 2, num_classes, kernel_size=1)
        self.out = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(c, c // 2, head_kernel_size, padding=head_kernel_size // 2, bias=bias),
                norm=nn.BatchNorm2d(c // 2),
                act=nn.ReLU(),
            )
        )
        self.dec4 = ForeignDecoderBlock(16 * c, 8 * c, bias)
        self.dec3 = ForeignDecoderBlock(8 * c, 4 * c, bias)
        self.dec2 = ForeignDecoderBlock(4 * c, 2 * c, bias)
        self.dec1 = ForeignDecoderBlock(2 * c, c, bias)
        self.ups = nn.ModuleList(
            [nn.ConvTranspose2d(2 * w, w, kernel_size=2, stride=2) for w in (c, 2 * c, 4 * c, 8 * c)]
        )
        self.bottleneck = ForeignBottleneck(8 * c, 16 * c, bias)
        self.enc1 = ForeignDoubleConv(3, c, bias)
        self.down2 = nn.Sequential(nn.MaxPool2d(2), ForeignDoubleConv(c, 2 * c, bias))
        self.down3 = nn.Sequential(nn.MaxPool2d(2), ForeignDoubleConv(2 * c, 4 * c, bias))
        self.down4 = nn.Sequential(nn.MaxPool2d(2), ForeignDoubleConv(4 * c, 8 * c, bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.enc1(x)
        x2 = self.down2(x1)
        x3 = self.down3(x2)
        x4 = self.down4(x3)
        y = self.bottleneck(nn.functional.max_pool2d(x4, 2))
        y = self.dec4(self._cat(x4, self.ups[3](y)))
        y = self.dec3(self._cat(x3, self.ups[2](y)))
        y = self.dec2(self._cat(x2, self.ups[1](y)))
        y = self.dec1(self._cat(x1, self.ups[0](y)))
        return self.final(self.out(y))

    def _cat(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return torch.cat([skip, up] if self.concat == "skip-up" else [up, skip], dim=1)


def _save_foreign(model: nn.Module, path: Path) -> Path:
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


@pytest.mark.parametrize(
    "bias, head_kernel_size",
    [(True, 3), (False, 1)],
    ids=["conv-bias-3x3-head", "no-bias-1x1-head"],
)
def test_foreign_checkpoint_gives_the_same_outputs(tmp_path, bias, head_kernel_size):
    foreign = randomise(ForeignUNet(bias=bias, head_kernel_size=head_kernel_size), seed=3)
    assert "enc1.block.0.weight" in foreign.state_dict()
    assert ("enc1.block.0.bias" in foreign.state_dict()) == bias
    path = _save_foreign(foreign, tmp_path / "foreign.safetensors")
    loaded = load_pretrained(path)
    assert loaded.config == {
        "in_channels": 3,
        "num_classes": 3,
        "base_channels": BASE,
        "head_kernel_size": head_kernel_size,
        "decoder_concat": "skip-up",
    }
    images = random_images(size=32)
    expected = eval_outputs(foreign, images)
    assert expected.abs().max() > 0.1  # the comparison is not between two near-zero outputs
    assert torch.allclose(eval_outputs(loaded, images), expected, atol=1e-5)


@pytest.mark.parametrize("num_classes", [3, 1], ids=["3-class", "binary"])
@pytest.mark.parametrize("concat", ["skip-up", "up-skip"])
@pytest.mark.parametrize("bias", [True, False], ids=["conv-bias", "no-bias"])
def test_foreign_checkpoint_of_either_concat_order_and_task(tmp_path, num_classes, concat, bias):
    """Issue 13: 3-class or binary, either concat order, with or without conv biases: exact with the right order."""
    foreign = randomise(ForeignUNet(num_classes=num_classes, bias=bias, concat=concat), seed=11)
    path = _save_foreign(foreign, tmp_path / "foreign.safetensors")
    images = random_images(size=32)
    expected = eval_outputs(foreign, images)
    assert expected.shape[1] == num_classes and expected.abs().mean() > 0.05
    loaded = load_pretrained(path, decoder_concat=concat)
    assert loaded.num_classes == num_classes and loaded.decoder_concat == concat
    assert (eval_outputs(loaded, images) - expected).abs().max() < 1e-4
    other = "up-skip" if concat == "skip-up" else "skip-up"
    wrong = eval_outputs(load_pretrained(path, decoder_concat=other), images)
    assert (wrong - expected).abs().max() > 1e-2  # the order matters: the wrong one is not close

    info = polypseg.weights.inspect_weights(path, decoder_concat=concat)
    assert info.layout == "foreign" and info.concat_source == "argument"
    assert info.task == ("binary" if num_classes == 1 else "multiclass")
    assert len(info.folded_biases) == (19 if bias else 0)  # 18 double-conv convolutions + the head's
    assert info.zero_biases == [] and len(info.kept_biases) == 5  # 4 upsamplers + classifier


def test_foreign_file_without_config_says_which_order_was_assumed(tmp_path, caplog):
    foreign = randomise(ForeignUNet(num_classes=1, concat="up-skip"), seed=12)
    path = _save_foreign(foreign, tmp_path / "foreign.safetensors")
    with caplog.at_level("WARNING", logger="polypseg.weights"):
        model = load_pretrained(path)
    notices = [r.getMessage() for r in caplog.records if r.name == "polypseg.weights"]
    assert model.decoder_concat == "skip-up" and len(notices) == 1
    assert str(path) in notices[0] and "assuming skip-up" in notices[0] and "--decoder-concat up-skip" in notices[0]
    assert "\n" not in notices[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="polypseg.weights"):
        load_pretrained(path, decoder_concat="up-skip")  # chosen: nothing to say
        load_pretrained(save_pretrained(model, tmp_path / "ours"))  # our config.json records the order
    assert not [r for r in caplog.records if r.name == "polypseg.weights"]


def test_foreign_checkpoint_survives_save_pretrained(tmp_path):
    foreign = randomise(ForeignUNet(), seed=4)
    loaded = load_pretrained(_save_foreign(foreign, tmp_path / "foreign.safetensors"))
    reloaded = load_pretrained(save_pretrained(loaded, tmp_path / "converted"))
    images = random_images()
    assert torch.allclose(eval_outputs(reloaded, images), eval_outputs(foreign, images), atol=1e-5)


def test_map_foreign_state_dict_names(tmp_path):
    foreign = randomise(ForeignUNet(), seed=5)
    architecture, state = map_foreign_state_dict(dict(foreign.state_dict()))
    assert architecture == {"in_channels": 3, "num_classes": 3, "base_channels": BASE, "head_kernel_size": 3}
    assert set(state) == set(UNet(**architecture).state_dict())
    assert torch.equal(state["encoder.0.0.weight"], foreign.enc1.block[0].weight)
    assert torch.equal(state["upsample.0.weight"], foreign.ups[3].weight)
    assert torch.equal(state["decoder.3.3.weight"], foreign.dec1.conv2.weight)
    assert torch.equal(state["classifier.weight"], foreign.final.weight)


def test_foreign_tensor_of_wrong_shape_is_named(tmp_path):
    foreign = randomise(ForeignUNet(bias=False), seed=6)
    tensors = {k: v.contiguous() for k, v in foreign.state_dict().items()}
    tensors["dec2.conv2.weight"] = torch.zeros(2 * BASE, 2 * BASE, 5, 5)
    path = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file(tensors, path)
    with pytest.raises(WeightsError, match=r"dec2\.conv2\.weight"):
        load_pretrained(path)


def test_foreign_head_kernel_of_even_width_is_named(tmp_path):
    """A U-Net with a 4x4 head kernel: every tensor has its place, but polypseg's U-Net cannot be built."""
    path = _save_foreign(randomise(ForeignUNet(head_kernel_size=4), seed=8), tmp_path / "foreign.safetensors")
    with pytest.raises(WeightsError, match=r"foreign\.safetensors: tensor 'out\.conv\..*' is a 4-wide head kernel"):
        load_pretrained(path)


def test_foreign_extra_tensor_is_named(tmp_path):
    foreign = randomise(ForeignUNet(bias=False), seed=7)
    tensors = {k: v.contiguous() for k, v in foreign.state_dict().items()}
    tensors["aux.proj.weight"] = torch.zeros(3, 5)
    path = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file(tensors, path)
    with pytest.raises(WeightsError, match=r"aux\.proj\.weight"):
        load_pretrained(path)


def test_unrelated_network_is_refused(tmp_path):
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))
    path = _save_foreign(other, tmp_path / "other.safetensors")
    with pytest.raises(WeightsError, match="other.safetensors"):
        load_pretrained(path)


class ListsUNet(nn.Module):
    """Blocks keep convolutions and norms in two lists; head and classifier share one Sequential."""

    def __init__(self, c: int = BASE, num_classes: int = BASE // 2) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Module:
            module = nn.Module()
            module.convs = nn.ModuleList([nn.Conv2d(cin, cout, 3, padding=1), nn.Conv2d(cout, cout, 3, padding=1)])
            module.norms = nn.ModuleList([nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)])
            return module

        widths = [c, 2 * c, 4 * c, 8 * c]
        self.down = nn.ModuleList([block(i, o) for i, o in zip([3, *widths[:3]], widths, strict=True)])
        self.mid = block(8 * c, 16 * c)
        self.up = nn.ModuleList([nn.ConvTranspose2d(2 * w, w, 2, stride=2, bias=False) for w in reversed(widths)])
        self.dec = nn.ModuleList([block(2 * w, w) for w in reversed(widths)])
        self.out = nn.Sequential(
            nn.Conv2d(c, c // 2, 3, padding=1),
            nn.BatchNorm2d(c // 2),
            nn.ReLU(),
            nn.Conv2d(c // 2, num_classes, 1, bias=False),
        )

    @staticmethod
    def run(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(block.convs, block.norms, strict=True):
            x = torch.relu(norm(conv(x)))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = self.run(block, x)
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        x = self.run(self.mid, x)
        for up, block, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = self.run(block, torch.cat([skip, up(x)], 1))
        return self.out(x)


def test_foreign_lists_layout_with_shared_head_sequential(tmp_path):
    """Conv and norm lists side by side, bias-free upsamplers/classifier, num_classes == base / 2."""
    foreign = randomise(ListsUNet(), seed=11)
    model = load_pretrained(_save_foreign(foreign, tmp_path / "lists.safetensors"))
    assert model.num_classes == BASE // 2 and model.base_channels == BASE
    images = random_images()
    assert torch.allclose(eval_outputs(model, images), eval_outputs(foreign, images), atol=1e-5)
