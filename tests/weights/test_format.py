import json
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

import polypseg
from polypseg.model import UNet
from polypseg.weights import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    WeightsError,
    load_pretrained,
    map_foreign_state_dict,
    read_model_config,
    resolve_weights,
    save_pretrained,
)

BASE = 8


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random parameters and BatchNorm running statistics, moderate enough to keep activations O(1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.num_batches_tracked.fill_(7)
            elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.2)
    return model.eval()


def _images(batch: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _outputs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.eval()(images)


@pytest.fixture
def random_unet() -> UNet:
    return _randomise(UNet(in_channels=3, num_classes=3, base_channels=BASE))


# --- our own format ---------------------------------------------------------------------------------


def test_save_and_load_round_trip(random_unet, tmp_path):
    folder = save_pretrained(random_unet, tmp_path / "weights")
    assert sorted(p.name for p in folder.iterdir()) == sorted([WEIGHTS_NAME, CONFIG_NAME])
    loaded = load_pretrained(folder)
    assert isinstance(loaded, UNet)
    assert not loaded.training
    assert loaded.config == random_unet.config
    for key, value in random_unet.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images = _images()
    assert torch.equal(_outputs(loaded, images), _outputs(random_unet, images))


def test_top_level_functions():
    assert polypseg.load_pretrained is load_pretrained
    assert polypseg.save_pretrained is save_pretrained


def test_config_json_describes_the_model(random_unet, tmp_path):
    folder = save_pretrained(random_unet, tmp_path / "weights", metadata={"epochs": 3, "path": tmp_path})
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["architecture"] == "UNet"
    assert config["class_names"] == ["background", "polyp", "boundary"]
    assert config["base_channels"] == BASE
    assert config["in_channels"] == 3
    assert config["num_classes"] == 3
    assert config["head_kernel_size"] == 3
    assert config["epochs"] == 3
    assert config["path"] == str(tmp_path)
    assert read_model_config(folder) == config


def test_model_card_snippet(random_unet, tmp_path):
    folder = save_pretrained(random_unet, tmp_path / "weights")
    config = json.loads((folder / "config.json").read_text())
    model = UNet(
        in_channels=config["in_channels"],
        num_classes=config["num_classes"],
        base_channels=config["base_channels"],
        head_kernel_size=config["head_kernel_size"],
    )
    model.load_state_dict(safetensors.torch.load_file(folder / "model.safetensors"))
    images = _images()
    assert torch.equal(_outputs(model, images), _outputs(random_unet, images))


def test_float16_saving_loads_into_float32(random_unet, tmp_path):
    folder = save_pretrained(random_unet, tmp_path / "weights", dtype=torch.float16)
    stored = safetensors.torch.load_file(folder / WEIGHTS_NAME)
    assert stored["encoder.0.0.weight"].dtype == torch.float16
    assert stored["encoder.0.1.num_batches_tracked"].dtype == torch.int64
    loaded = load_pretrained(folder)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for key, value in random_unet.state_dict().items():
        expected = value.half().float() if value.is_floating_point() else value
        assert torch.equal(loaded.state_dict()[key], expected), key
    images = _images()
    torch.testing.assert_close(_outputs(loaded, images), _outputs(random_unet, images), atol=5e-2, rtol=5e-2)


def test_head_kernel_size_survives_round_trip(tmp_path):
    model = _randomise(UNet(base_channels=BASE, head_kernel_size=1))
    loaded = load_pretrained(save_pretrained(model, tmp_path / "weights"))
    assert loaded.head_kernel_size == 1
    images = _images()
    assert torch.equal(_outputs(loaded, images), _outputs(model, images))


def test_bare_file_without_config_loads(random_unet, tmp_path):
    folder = save_pretrained(random_unet, tmp_path / "weights")
    bare = tmp_path / "elsewhere" / "unet.safetensors"
    bare.parent.mkdir()
    bare.write_bytes((folder / WEIGHTS_NAME).read_bytes())
    loaded = load_pretrained(bare)
    assert loaded.config == random_unet.config
    images = _images()
    torch.testing.assert_close(_outputs(loaded, images), _outputs(random_unet, images), atol=1e-5, rtol=1e-5)


def test_file_path_inside_a_weights_folder_uses_its_config(random_unet, tmp_path):
    folder = save_pretrained(random_unet, tmp_path / "weights")
    loaded = load_pretrained(folder / WEIGHTS_NAME)
    assert loaded.config == random_unet.config


def test_run_folder_resolves_to_best(random_unet, tmp_path):
    run = tmp_path / "run"
    save_pretrained(random_unet, run / "best")
    (run / "config.yaml").write_text("epochs: 1\n")
    assert resolve_weights(run) == run / "best"
    loaded = load_pretrained(run)
    images = _images()
    assert torch.equal(_outputs(loaded, images), _outputs(random_unet, images))
    assert read_model_config(run)["base_channels"] == BASE


def test_lightning_style_prefixed_checkpoint_loads(random_unet, tmp_path):
    # Our own names behind a "model." prefix, as a LightningModule's state_dict would write them.
    path = tmp_path / "lightning.safetensors"
    safetensors.torch.save_file({f"model.{k}": v.contiguous() for k, v in random_unet.state_dict().items()}, path)
    loaded = load_pretrained(path)
    images = _images()
    torch.testing.assert_close(_outputs(loaded, images), _outputs(random_unet, images), atol=1e-5, rtol=1e-5)


# --- files that do not fit --------------------------------------------------------------------------


def _rewrite(folder: Path, change) -> None:
    tensors = safetensors.torch.load_file(folder / WEIGHTS_NAME)
    change(tensors)
    safetensors.torch.save_file(tensors, folder / WEIGHTS_NAME)


def test_tensor_of_wrong_shape_is_named(random_unet, tmp_path):
    folder = save_pretrained(random_unet, tmp_path / "weights")
    _rewrite(folder, lambda t: t.__setitem__("decoder.1.3.weight", torch.zeros(16, 16, 5, 5)))
    with pytest.raises(WeightsError, match=r"decoder\.1\.3\.weight"):
        load_pretrained(folder)


def test_extra_tensor_is_named(random_unet, tmp_path):
    folder = save_pretrained(random_unet, tmp_path / "weights")
    _rewrite(folder, lambda t: t.__setitem__("auxiliary_head.weight", torch.zeros(3, 4, 1, 1)))
    with pytest.raises(WeightsError, match="auxiliary_head.weight"):
        load_pretrained(folder)


def test_missing_tensor_is_named(random_unet, tmp_path):
    folder = save_pretrained(random_unet, tmp_path / "weights")
    _rewrite(folder, lambda t: t.pop("bottleneck.4.running_var"))
    with pytest.raises(WeightsError, match=r"bottleneck\.4\.running_var"):
        load_pretrained(folder)


def test_extra_tensor_in_bare_file_is_named(random_unet, tmp_path):
    tensors = {k: v.contiguous() for k, v in random_unet.state_dict().items()}
    tensors["extra.scale"] = torch.ones(3)
    path = tmp_path / "bare.safetensors"
    safetensors.torch.save_file(tensors, path)
    with pytest.raises(WeightsError, match="extra.scale"):
        load_pretrained(path)


class _CreatesFileWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("kind", ["pickle", "torch_save", "random", "empty", "text"])
def test_non_safetensors_file_is_refused_without_unpickling(tmp_path, kind):
    marker = tmp_path / "unpickled.marker"
    path = tmp_path / "weights" / WEIGHTS_NAME
    path.parent.mkdir()
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"encoder.0.0.weight": _CreatesFileWhenUnpickled(marker)}))
    elif kind == "torch_save":
        torch.save({"payload": _CreatesFileWhenUnpickled(marker)}, path)
    elif kind == "random":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).byte().numpy())
    elif kind == "text":
        path.write_text("{}")
    else:
        path.write_bytes(b"")
    with pytest.raises(WeightsError, match=WEIGHTS_NAME):
        load_pretrained(path.parent)
    assert not marker.exists()


def test_missing_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_pretrained(tmp_path / "nothing-here")
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(WeightsError, match="not found"):
        load_pretrained(tmp_path / "empty-folder")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", json.dumps({"base_channels": "8"})])
def test_bad_config_json_raises(random_unet, tmp_path, content):
    folder = save_pretrained(random_unet, tmp_path / "weights")
    (folder / CONFIG_NAME).write_text(content)
    with pytest.raises(WeightsError, match=CONFIG_NAME):
        load_pretrained(folder)


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
    foreign = _randomise(ForeignUNet(bias=bias, head_kernel_size=head_kernel_size), seed=3)
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
    images = _images(size=32)
    expected = _outputs(foreign, images)
    assert expected.abs().max() > 0.1  # the comparison is not between two near-zero outputs
    assert torch.allclose(_outputs(loaded, images), expected, atol=1e-5)


@pytest.mark.parametrize("num_classes", [3, 1], ids=["3-class", "binary"])
@pytest.mark.parametrize("concat", ["skip-up", "up-skip"])
@pytest.mark.parametrize("bias", [True, False], ids=["conv-bias", "no-bias"])
def test_foreign_checkpoint_of_either_concat_order_and_task(tmp_path, num_classes, concat, bias):
    """Issue 13: 3-class or binary, either concat order, with or without conv biases: exact with the right order."""
    foreign = _randomise(ForeignUNet(num_classes=num_classes, bias=bias, concat=concat), seed=11)
    path = _save_foreign(foreign, tmp_path / "foreign.safetensors")
    images = _images(size=32)
    expected = _outputs(foreign, images)
    assert expected.shape[1] == num_classes and expected.abs().mean() > 0.05
    loaded = load_pretrained(path, decoder_concat=concat)
    assert loaded.num_classes == num_classes and loaded.decoder_concat == concat
    assert (_outputs(loaded, images) - expected).abs().max() < 1e-4
    other = "up-skip" if concat == "skip-up" else "skip-up"
    wrong = _outputs(load_pretrained(path, decoder_concat=other), images)
    assert (wrong - expected).abs().max() > 1e-2  # the order matters: the wrong one is not close

    info = polypseg.weights.inspect_weights(path, decoder_concat=concat)
    assert info.layout == "foreign" and info.concat_source == "argument"
    assert info.task == ("binary" if num_classes == 1 else "multiclass")
    assert len(info.folded_biases) == (19 if bias else 0)  # 18 double-conv convolutions + the head's
    assert info.zero_biases == [] and len(info.kept_biases) == 5  # 4 upsamplers + classifier


def test_foreign_file_without_config_says_which_order_was_assumed(tmp_path, caplog):
    foreign = _randomise(ForeignUNet(num_classes=1, concat="up-skip"), seed=12)
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


def test_decoder_concat_is_saved_and_restored(tmp_path):
    model = _randomise(UNet(num_classes=1, base_channels=BASE, decoder_concat="up-skip"), seed=13)
    folder = save_pretrained(model, tmp_path / "w")
    config = read_model_config(folder)
    assert config["decoder_concat"] == "up-skip" and config["task"] == "binary"
    assert config["class_names"] == ["background", "polyp"]
    loaded = load_pretrained(folder)
    assert loaded.decoder_concat == "up-skip"
    images = _images(size=32)
    assert torch.equal(_outputs(loaded, images), _outputs(model, images))
    assert polypseg.weights.inspect_weights(folder).concat_source == "config.json"
    overridden = load_pretrained(folder, decoder_concat="skip-up")  # an explicit choice wins
    assert overridden.decoder_concat == "skip-up"
    (folder / CONFIG_NAME).write_text(json.dumps({**config, "decoder_concat": "sideways"}))
    with pytest.raises(WeightsError, match="decoder_concat"):
        load_pretrained(folder)
    with pytest.raises(ValueError, match="decoder_concat"):
        load_pretrained(tmp_path / "w", decoder_concat="down-up")


def test_foreign_checkpoint_survives_save_pretrained(tmp_path):
    foreign = _randomise(ForeignUNet(), seed=4)
    loaded = load_pretrained(_save_foreign(foreign, tmp_path / "foreign.safetensors"))
    reloaded = load_pretrained(save_pretrained(loaded, tmp_path / "converted"))
    images = _images()
    assert torch.allclose(_outputs(reloaded, images), _outputs(foreign, images), atol=1e-5)


def test_map_foreign_state_dict_names(tmp_path):
    foreign = _randomise(ForeignUNet(), seed=5)
    architecture, state = map_foreign_state_dict(dict(foreign.state_dict()))
    assert architecture == {"in_channels": 3, "num_classes": 3, "base_channels": BASE, "head_kernel_size": 3}
    assert set(state) == set(UNet(**architecture).state_dict())
    assert torch.equal(state["encoder.0.0.weight"], foreign.enc1.block[0].weight)
    assert torch.equal(state["upsample.0.weight"], foreign.ups[3].weight)
    assert torch.equal(state["decoder.3.3.weight"], foreign.dec1.conv2.weight)
    assert torch.equal(state["classifier.weight"], foreign.final.weight)


def test_foreign_tensor_of_wrong_shape_is_named(tmp_path):
    foreign = _randomise(ForeignUNet(bias=False), seed=6)
    tensors = {k: v.contiguous() for k, v in foreign.state_dict().items()}
    tensors["dec2.conv2.weight"] = torch.zeros(2 * BASE, 2 * BASE, 5, 5)
    path = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file(tensors, path)
    with pytest.raises(WeightsError, match=r"dec2\.conv2\.weight"):
        load_pretrained(path)


def test_foreign_head_kernel_of_even_width_is_named(tmp_path):
    """A U-Net with a 4x4 head kernel: every tensor has its place, but polypseg's U-Net cannot be built."""
    path = _save_foreign(_randomise(ForeignUNet(head_kernel_size=4), seed=8), tmp_path / "foreign.safetensors")
    with pytest.raises(WeightsError, match=r"foreign\.safetensors: tensor 'out\.conv\..*' is a 4-wide head kernel"):
        load_pretrained(path)


def test_foreign_extra_tensor_is_named(tmp_path):
    foreign = _randomise(ForeignUNet(bias=False), seed=7)
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
    foreign = _randomise(ListsUNet(), seed=11)
    model = load_pretrained(_save_foreign(foreign, tmp_path / "lists.safetensors"))
    assert model.num_classes == BASE // 2 and model.base_channels == BASE
    images = _images()
    assert torch.allclose(_outputs(model, images), _outputs(foreign, images), atol=1e-5)


def test_bare_safetensors_of_a_width_4_model(tmp_path):
    torch.manual_seed(0)
    ours = _randomise(UNet(base_channels=4), seed=12)
    path = tmp_path / "bare.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in ours.state_dict().items()}, path)
    model = load_pretrained(path)
    assert model.config == ours.config
    images = _images()
    assert torch.allclose(_outputs(model, images), _outputs(ours, images), atol=1e-6)


def test_the_bundled_config_records_task_and_decoder_concat(capsys):
    # The bundled model was trained before config.json recorded them; `polypseg inspect --data` scored its
    # own order skip-up (the code's order before the setting existed) at 0.88 polyp Dice against 0.30.
    from polypseg.apps.cli import main

    config = read_model_config()
    assert config["task"] == "multiclass" and config["decoder_concat"] == "skip-up"
    keys = list(config)
    assert keys[keys.index("head_kernel_size") :][:3] == ["head_kernel_size", "decoder_concat", "task"]
    assert polypseg.weights.inspect_weights(None).concat_source == "config.json"
    assert main(["inspect"]) == 0
    printed = capsys.readouterr().out
    assert "decoder concat: skip-up (recorded in config.json)" in printed and "older than" not in printed
