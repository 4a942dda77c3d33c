"""``push_to_hub`` and ``polypseg push`` (``polypseg.publish.push``), against the stand-in Hub of
``tests/hub_server.py``, never the internet."""

from __future__ import annotations

import pytest

from helpers import same_weights
from hub_server import OWNER_REPO
from polypseg.apps.cli import main
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
