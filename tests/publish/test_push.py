"""``push_to_hub`` and ``polypseg push`` (``polypseg.publish.push``), against the stand-in Hub of
``tests/hub_server.py``, never the internet."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from helpers import same_weights
from hub_server import OWNER_REPO
from polypseg.apps.cli import main
from polypseg.model import UNet
from polypseg.publish.push import push_to_hub
from polypseg.weights import load_pretrained, save_pretrained


def test_push_uploads_weights_config_and_card(stand_in_hub, tiny_unet, tmp_path):
    weights = save_pretrained(tiny_unet, tmp_path / "weights", metadata={"input_size": [64, 64]})
    before = sorted(p.name for p in weights.iterdir())
    url = push_to_hub(weights, OWNER_REPO, private=True, token="test-token")
    assert url.startswith(f"{stand_in_hub.endpoint}/{OWNER_REPO}/commit/")
    files = stand_in_hub.files(OWNER_REPO)
    assert files["model.safetensors"] == (weights / "model.safetensors").read_bytes()
    assert files["config.json"] == (weights / "config.json").read_bytes()
    card = files["README.md"].decode()
    assert card.startswith("---\n") and f"hf://{OWNER_REPO}" in card
    assert stand_in_hub.private[OWNER_REPO] is True
    assert sorted(p.name for p in weights.iterdir()) == before  # the local folder is left as it was
    # Round trip: what was pushed loads back through hf://.
    assert same_weights(load_pretrained(f"hf://{OWNER_REPO}"), tiny_unet)


def test_cli_push_to_a_branch_with_own_card(stand_in_hub, tiny_unet, tmp_path, capsys):
    weights = save_pretrained(tiny_unet, tmp_path / "weights")
    card = tmp_path / "card.md"
    card.write_text("---\nlicense: other\n---\n# hand-written\n")
    args = ["push", "--weights", str(weights), "--repo", OWNER_REPO, "--branch", "experiment", "--card", str(card)]
    assert main([*args, "--token", "test-token"]) == 0
    assert "experiment" in stand_in_hub.branches[OWNER_REPO]
    assert stand_in_hub.files(OWNER_REPO, "experiment")["README.md"].decode().endswith("# hand-written\n")
    assert "README.md" not in stand_in_hub.files(OWNER_REPO, "main")
    assert f"{OWNER_REPO}/commit/" in capsys.readouterr().out


def test_push_refuses_weights_that_do_not_load(stand_in_hub, tmp_path, capsys):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not safetensors")
    assert main(["push", "--weights", str(tmp_path / "broken"), "--repo", OWNER_REPO]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
    assert not any(method == "POST" for method, _ in stand_in_hub.requests)


@pytest.mark.parametrize("repo", ["owner", "a--b/c", "owner/-repo"])
def test_push_to_a_repository_name_the_hub_refuses_is_one_line(stand_in_hub, tiny_unet, tmp_path, capsys, repo):
    folder = save_pretrained(tiny_unet, tmp_path / "weights")
    assert main(["push", "--weights", str(folder), "--repo", repo]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("polypseg push: error: --repo") and len(err.splitlines()) == 1, err
    assert stand_in_hub.requests == []


def test_push_of_a_run_uploads_its_splits(stand_in_hub, tiny_unet, tmp_path):
    run = tmp_path / "run"
    save_pretrained(tiny_unet, run / "best")
    (run / "config.yaml").write_text("base_channels: 8\n")
    (run / "splits.json").write_text('{"train": ["a"], "val": ["b"], "test": ["c"]}\n')
    push_to_hub(run, OWNER_REPO, token="test-token")
    files = stand_in_hub.files(OWNER_REPO)
    assert files["splits.json"] == (run / "splits.json").read_bytes()
    assert sorted(files) == [".gitattributes", "README.md", "config.json", "model.safetensors", "splits.json"]


@pytest.mark.parametrize("with_old_config", [False, True])
def test_push_of_foreign_weights_records_the_order_they_were_loaded_with(stand_in_hub, tmp_path, with_old_config):
    """A bare foreign file (or one whose config.json predates the order) pushed with --decoder-concat up-skip:
    the Hub's config.json says up-skip, so hf:// loads it right without being told."""
    torch.manual_seed(0)
    original = UNet(base_channels=4, decoder_concat="up-skip").eval()
    renamed = {"net." + key.replace("encoder", "down"): value for key, value in original.state_dict().items()}
    folder = tmp_path / "foreign"
    folder.mkdir()
    safetensors.torch.save_file(renamed, str(folder / "model.safetensors"))
    if with_old_config:
        (folder / "config.json").write_text('{"input_size": [64, 64], "note": "kept"}\n')
    before = sorted(p.name for p in folder.iterdir())
    push_to_hub(folder, OWNER_REPO, token="test-token", decoder_concat="up-skip")
    config = json.loads(stand_in_hub.files(OWNER_REPO)["config.json"])
    assert config["decoder_concat"] == "up-skip" and config["task"] == "multiclass" and config["base_channels"] == 4
    if with_old_config:
        assert config["note"] == "kept" and config["input_size"] == [64, 64]
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing local is written
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(load_pretrained(f"hf://{OWNER_REPO}")(images), original(images), atol=1e-5)
