"""The weights folder format (``polypseg.weights.format``): round trips, ``config.json``, bare files, run
folders, and files that do not fit."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import torch

import polypseg
from helpers import eval_outputs, random_images, randomise
from polypseg.model import UNet
from polypseg.weights import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    WeightsError,
    load_pretrained,
    read_model_config,
    resolve_weights,
    save_pretrained,
)

BASE = 8


@pytest.fixture
def random_unet() -> UNet:
    return randomise(UNet(in_channels=3, num_classes=3, base_channels=BASE))


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
    images = random_images()
    assert torch.equal(eval_outputs(loaded, images), eval_outputs(random_unet, images))


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
    images = random_images()
    assert torch.equal(eval_outputs(model, images), eval_outputs(random_unet, images))


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
    images = random_images()
    torch.testing.assert_close(eval_outputs(loaded, images), eval_outputs(random_unet, images), atol=5e-2, rtol=5e-2)


def test_head_kernel_size_survives_round_trip(tmp_path):
    model = randomise(UNet(base_channels=BASE, head_kernel_size=1))
    loaded = load_pretrained(save_pretrained(model, tmp_path / "weights"))
    assert loaded.head_kernel_size == 1
    images = random_images()
    assert torch.equal(eval_outputs(loaded, images), eval_outputs(model, images))


def test_bare_file_without_config_loads(random_unet, tmp_path):
    folder = save_pretrained(random_unet, tmp_path / "weights")
    bare = tmp_path / "elsewhere" / "unet.safetensors"
    bare.parent.mkdir()
    bare.write_bytes((folder / WEIGHTS_NAME).read_bytes())
    loaded = load_pretrained(bare)
    assert loaded.config == random_unet.config
    images = random_images()
    torch.testing.assert_close(eval_outputs(loaded, images), eval_outputs(random_unet, images), atol=1e-5, rtol=1e-5)


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
    images = random_images()
    assert torch.equal(eval_outputs(loaded, images), eval_outputs(random_unet, images))
    assert read_model_config(run)["base_channels"] == BASE


def test_lightning_style_prefixed_checkpoint_loads(random_unet, tmp_path):
    # Our own names behind a "model." prefix, as a LightningModule's state_dict would write them.
    path = tmp_path / "lightning.safetensors"
    safetensors.torch.save_file({f"model.{k}": v.contiguous() for k, v in random_unet.state_dict().items()}, path)
    loaded = load_pretrained(path)
    images = random_images()
    torch.testing.assert_close(eval_outputs(loaded, images), eval_outputs(random_unet, images), atol=1e-5, rtol=1e-5)


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


def test_decoder_concat_is_saved_and_restored(tmp_path):
    model = randomise(UNet(num_classes=1, base_channels=BASE, decoder_concat="up-skip"), seed=13)
    folder = save_pretrained(model, tmp_path / "w")
    config = read_model_config(folder)
    assert config["decoder_concat"] == "up-skip" and config["task"] == "binary"
    assert config["class_names"] == ["background", "polyp"]
    loaded = load_pretrained(folder)
    assert loaded.decoder_concat == "up-skip"
    images = random_images(size=32)
    assert torch.equal(eval_outputs(loaded, images), eval_outputs(model, images))
    assert polypseg.weights.inspect_weights(folder).concat_source == "config.json"
    overridden = load_pretrained(folder, decoder_concat="skip-up")  # an explicit choice wins
    assert overridden.decoder_concat == "skip-up"
    (folder / CONFIG_NAME).write_text(json.dumps({**config, "decoder_concat": "sideways"}))
    with pytest.raises(WeightsError, match="decoder_concat"):
        load_pretrained(folder)
    with pytest.raises(ValueError, match="decoder_concat"):
        load_pretrained(tmp_path / "w", decoder_concat="down-up")


def test_bare_safetensors_of_a_width_4_model(tmp_path):
    torch.manual_seed(0)
    ours = randomise(UNet(base_channels=4), seed=12)
    path = tmp_path / "bare.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in ours.state_dict().items()}, path)
    model = load_pretrained(path)
    assert model.config == ours.config
    images = random_images()
    assert torch.allclose(eval_outputs(model, images), eval_outputs(ours, images), atol=1e-6)


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
