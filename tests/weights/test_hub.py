"""``hf://`` weights, ``polypseg push``: against a stand-in Hub on 127.0.0.1, never the internet.

The stand-in implements the few endpoints huggingface_hub uses for ``hf_hub_download`` (HEAD/GET
``/OWNER/REPO/resolve/REVISION/PATH``) and for ``create_repo`` + ``create_branch`` + ``create_commit``
(``/api/repos/create``, ``/api/validate-yaml``, ``/api/models/.../preupload|branch|commit/...``; every file
is a "regular" upload, so no LFS/Xet transfer is involved). huggingface_hub reads ``HF_ENDPOINT``,
``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` once, at import, into ``huggingface_hub.constants``: the tests
patch those attributes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import safetensors.torch
import torch
import yaml
from huggingface_hub import constants

import polypseg
from polypseg.apps.cli import main
from polypseg.publish.push import push_to_hub
from polypseg.weights import WeightsError, hub, load_pretrained, read_model_config, resolve_weights, save_pretrained
from polypseg.weights.hub import parse_hub_reference

OWNER_REPO = "someone/polyp-unet"


class StandInHub:
    """A tiny in-memory Hub: repositories of commits of files, served over HTTP on an ephemeral port."""

    def __init__(self) -> None:
        self.branches: dict[str, dict[str, str]] = {}  # repo -> branch -> commit
        self.commits: dict[str, dict[str, bytes]] = {}  # commit -> path -> content
        self.private: dict[str, bool] = {}
        self.requests: list[tuple[str, str]] = []
        hub_state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                hub_state.resolve(self, with_body=False)

            def do_GET(self) -> None:  # noqa: N802
                hub_state.resolve(self, with_body=True)

            def do_POST(self) -> None:  # noqa: N802
                hub_state.post(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # Repository content -------------------------------------------------------------------------------
    def commit(self, repo: str, files: dict[str, bytes], branch: str = "main") -> str:
        parent = self.branches.get(repo, {}).get(branch)
        content = {**self.commits.get(parent, {}), **files} if parent else dict(files)
        digest = hashlib.sha1(
            repr((parent, sorted((k, hashlib.sha256(v).hexdigest()) for k, v in content.items()))).encode()
        )
        commit = digest.hexdigest()
        self.commits[commit] = content
        self.branches.setdefault(repo, {})[branch] = commit
        return commit

    def files(self, repo: str, revision: str = "main") -> dict[str, bytes]:
        return self.commits[self.branches[repo].get(revision, revision)]

    # HTTP --------------------------------------------------------------------------------------------
    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def _json(self, handler: BaseHTTPRequestHandler, status: int, value: object, headers: dict | None = None) -> None:
        self._reply(
            handler, status, json.dumps(value).encode(), {"Content-Type": "application/json", **(headers or {})}
        )

    def resolve(self, handler: BaseHTTPRequestHandler, with_body: bool) -> None:
        path = urlsplit(handler.path).path
        self.requests.append((handler.command, path))
        parts = path.strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._reply(handler, 404)
        repo, revision, filename = "/".join(parts[:2]), unquote(parts[3]), "/".join(unquote(p) for p in parts[4:])
        if repo not in self.branches:
            return self._reply(handler, 404, headers={"X-Error-Code": "RepoNotFound"})
        commit = self.branches[repo].get(revision, revision if revision in self.commits else None)
        if commit is None:
            return self._reply(handler, 404, headers={"X-Error-Code": "RevisionNotFound"})
        content = self.commits[commit].get(filename)
        if content is None:
            return self._reply(handler, 404, headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(content).hexdigest()}"'}
        self._reply(handler, 200, content, headers)

    def post(self, handler: BaseHTTPRequestHandler) -> None:
        path = urlsplit(handler.path).path
        self.requests.append(("POST", path))
        body = handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        parts = path.strip("/").split("/")
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo = f"{payload['organization']}/{payload['name']}"
            if repo in self.branches:
                return self._json(handler, 409, {"error": "already exists"})
            self.private[repo] = payload.get("visibility") == "private"
            self.commit(repo, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
            return self._json(handler, 200, {"url": f"{self.endpoint}/{repo}"})
        if path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            assert content.startswith("---\n")
            yaml.safe_load(content.split("---\n")[1])  # the card's metadata must parse
            return self._json(handler, 200, {"errors": [], "warnings": []})
        if len(parts) >= 6 and parts[:2] == ["api", "models"]:
            repo, action, revision = f"{parts[2]}/{parts[3]}", parts[4], unquote("/".join(parts[5:]))
            if repo not in self.branches:
                return self._json(handler, 404, {"error": "no repo"}, {"X-Error-Code": "RepoNotFound"})
            if action == "preupload":
                files = json.loads(body)["files"]
                return self._json(
                    handler,
                    200,
                    {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
                )
            if action == "branch":
                if revision in self.branches[repo]:
                    return self._json(handler, 409, {"error": "exists"})
                self.branches[repo][revision] = self.branches[repo]["main"]
                return self._json(handler, 200, {})
            if action == "commit":
                lines = [json.loads(line) for line in body.decode().splitlines() if line]
                files = {
                    item["value"]["path"]: base64.b64decode(item["value"]["content"])
                    for item in lines
                    if item["key"] == "file"
                }
                commit = self.commit(repo, files, branch=revision)
                return self._json(
                    handler, 200, {"commitUrl": f"{self.endpoint}/{repo}/commit/{commit}", "commitOid": commit}
                )
        self._reply(handler, 404)


@pytest.fixture
def stand_in_hub(tmp_path, monkeypatch):
    """A running stand-in Hub, with huggingface_hub pointed at it and at an empty cache in ``tmp_path``."""
    server = StandInHub()
    monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    monkeypatch.setattr(hub, "_downloaded", {})
    yield server
    server.close()


def _folder_bytes(tiny_unet, tmp_path: Path, name: str = "weights") -> dict[str, bytes]:
    folder = save_pretrained(tiny_unet, tmp_path / name, metadata={"input_size": [64, 64]})
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


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
    assert _same_weights(model, tiny_unet)
    folder = resolve_weights(f"hf://{OWNER_REPO}")
    assert folder.parts[-2:] == ("snapshots", commit) and folder.is_relative_to(tmp_path / "hf-cache")
    assert read_model_config(f"hf://{OWNER_REPO}")["input_size"] == [64, 64]
    assert stand_in_hub.requests.count(("HEAD", f"/{OWNER_REPO}/resolve/main/model.safetensors")) == 1

    # Offline: the same reference is served from the cache alone, in a fresh process state.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "_downloaded", {})
    stand_in_hub.close()
    before = len(stand_in_hub.requests)
    assert _same_weights(load_pretrained(f"hf://{OWNER_REPO}"), tiny_unet)
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
    assert _same_weights(load_pretrained(f"hf://{OWNER_REPO}"), newer)
    assert _same_weights(load_pretrained(f"hf://{OWNER_REPO}@v1"), tiny_unet)
    assert _same_weights(load_pretrained(f"hf://{OWNER_REPO}@{first}"), tiny_unet)


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


# --- push ---------------------------------------------------------------------------------------------


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
    assert _same_weights(load_pretrained(f"hf://{OWNER_REPO}"), tiny_unet)


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
