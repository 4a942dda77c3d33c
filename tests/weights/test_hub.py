"""``hf://`` weights (``polypseg.weights.hub``): references, download, cache, offline, against the stand-in Hub of
``tests/hub_server.py``, never the internet."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from huggingface_hub import constants

import polypseg
from helpers import same_weights
from hub_server import OWNER_REPO
from polypseg.apps.cli import main
from polypseg.weights import WeightsError, hub, load_pretrained, read_model_config, resolve_weights, save_pretrained
from polypseg.weights.hub import parse_hub_reference


def _folder_bytes(tiny_unet, tmp_path: Path, name: str = "weights") -> dict[str, bytes]:
    folder = save_pretrained(tiny_unet, tmp_path / name, metadata={"input_size": [64, 64]})
    return {path.name: path.read_bytes() for path in folder.iterdir()}


# --- references ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri, repo, revision, filename",
    [
        ("hf://owner/repo", "owner/repo", None, "model.safetensors"),
        ("hf://owner/repo@v1.0", "owner/repo", "v1.0", "model.safetensors"),
        ("hf://models/owner/repo@main/small", "owner/repo", "main", "small/model.safetensors"),
        ("hf://owner/repo@refs/pr/3/unet.safetensors", "owner/repo", "refs/pr/3", "unet.safetensors"),
        ("hf://owner/repo@feature%2Fx/", "owner/repo", "feature/x", "model.safetensors"),
    ],
)
def test_parse_hub_reference(uri, repo, revision, filename):
    reference = parse_hub_reference(uri)
    assert (reference.repo_id, reference.revision, reference.filename) == (repo, revision, filename)


@pytest.mark.parametrize(
    "uri",
    # The last three pass our pattern but not the Hub's rules (huggingface_hub's HFValidationError).
    [
        "hf://owner",
        "hf://datasets/owner/repo",
        "hf://owner/repo/../x",
        "hf://a b/c",
        "hf://a--b/c",
        "hf://-a/b",
        f"hf://owner/{'x' * 100}",
    ],
)
def test_bad_hub_reference_is_one_line(uri):
    with pytest.raises(WeightsError, match="hf://") as error:
        parse_hub_reference(uri)
    assert "\n" not in str(error.value)


# --- download -----------------------------------------------------------------------------------------


def test_load_pretrained_from_the_hub_then_offline(stand_in_hub, tiny_unet, tmp_path, monkeypatch):
    commit = stand_in_hub.commit(OWNER_REPO, _folder_bytes(tiny_unet, tmp_path))
    model = polypseg.load_pretrained(f"hf://{OWNER_REPO}")
    assert same_weights(model, tiny_unet)
    folder = resolve_weights(f"hf://{OWNER_REPO}")
    assert folder.parts[-2:] == ("snapshots", commit) and folder.is_relative_to(tmp_path / "hf-cache")
    assert read_model_config(f"hf://{OWNER_REPO}")["input_size"] == [64, 64]
    assert stand_in_hub.requests.count(("HEAD", f"/{OWNER_REPO}/resolve/main/model.safetensors")) == 1

    # Offline: the same reference is served from the cache alone, in a fresh process state.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "_downloaded", {})
    stand_in_hub.close()
    before = len(stand_in_hub.requests)
    assert same_weights(load_pretrained(f"hf://{OWNER_REPO}"), tiny_unet)
    assert read_model_config(f"hf://{OWNER_REPO}")["input_size"] == [64, 64]
    assert len(stand_in_hub.requests) == before
    with pytest.raises(WeightsError, match="not in the Hugging Face cache .* HF_HUB_OFFLINE"):
        load_pretrained("hf://someone/never-downloaded")


def test_offline_environment_variable_in_a_fresh_process(stand_in_hub, tiny_unet, tmp_path):
    """The user's way: ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` set in the environment, read by huggingface_hub."""
    stand_in_hub.commit(OWNER_REPO, _folder_bytes(tiny_unet, tmp_path))
    load_pretrained(f"hf://{OWNER_REPO}")
    stand_in_hub.close()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
        "HF_ENDPOINT": stand_in_hub.endpoint,
    }
    code = f"import polypseg; print(polypseg.load_pretrained('hf://{OWNER_REPO}').base_channels)"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "8"


def test_revision_selects_the_commit(stand_in_hub, tiny_unet, tmp_path):
    first = stand_in_hub.commit(OWNER_REPO, _folder_bytes(tiny_unet, tmp_path, "v1"))
    torch.manual_seed(1)
    newer = type(tiny_unet)(base_channels=8).eval()
    stand_in_hub.commit(OWNER_REPO, _folder_bytes(newer, tmp_path, "v2"))
    stand_in_hub.branches[OWNER_REPO]["v1"] = first
    assert same_weights(load_pretrained(f"hf://{OWNER_REPO}"), newer)
    assert same_weights(load_pretrained(f"hf://{OWNER_REPO}@v1"), tiny_unet)
    assert same_weights(load_pretrained(f"hf://{OWNER_REPO}@{first}"), tiny_unet)


def test_foreign_checkpoint_without_config(stand_in_hub, tiny_unet):
    """Like the card's own repository: only ``model.safetensors``, with another author's tensor names."""
    renamed = {
        "unet." + key.replace("encoder", "down").replace("decoder", "up_blocks").replace("classifier", "final"): value
        for key, value in tiny_unet.state_dict().items()
    }
    stand_in_hub.commit(OWNER_REPO, {"model.safetensors": safetensors.torch.save(renamed)})
    model = load_pretrained(f"hf://{OWNER_REPO}")
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(images), tiny_unet(images), atol=1e-5)
    assert read_model_config(f"hf://{OWNER_REPO}") == {}
    # The missing config.json is remembered by the cache: loading again asks for it no more.
    hub._downloaded.clear()
    load_pretrained(f"hf://{OWNER_REPO}")
    assert len([r for r in stand_in_hub.requests if r[1].endswith("config.json")]) == 1


@pytest.mark.parametrize(
    "uri, message",
    [
        ("hf://nobody/nothing", "repository nobody/nothing not found"),
        (f"hf://{OWNER_REPO}@no-such-branch", "revision 'no-such-branch' not found"),
        (f"hf://{OWNER_REPO}/other.safetensors", "has no file 'other.safetensors'"),
    ],
)
def test_hub_errors_are_one_line(stand_in_hub, tiny_unet, tmp_path, capsys, uri, message):
    stand_in_hub.commit(OWNER_REPO, _folder_bytes(tiny_unet, tmp_path))
    with pytest.raises(WeightsError, match=message) as error:
        load_pretrained(uri)
    assert "\n" not in str(error.value)
    assert main(["predict", "--weights", uri, str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_cli_predict_with_hub_weights(stand_in_hub, tiny_unet, tmp_path, synthetic_dataset, capsys):
    stand_in_hub.commit(OWNER_REPO, _folder_bytes(tiny_unet, tmp_path))
    data = synthetic_dataset(sizes=[(64, 64)] * 2)
    out = tmp_path / "out"
    assert main(["predict", "--weights", f"hf://{OWNER_REPO}", str(data / "images"), "--out", str(out)]) == 0
    assert len(list(out.glob("*_mask.png"))) == 2
