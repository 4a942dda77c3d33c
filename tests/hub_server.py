"""A stand-in Hugging Face Hub on 127.0.0.1 for the ``hf://`` and push tests: never the internet.

The stand-in implements the few endpoints huggingface_hub uses for ``hf_hub_download`` (HEAD/GET
``/OWNER/REPO/resolve/REVISION/PATH``) and for ``create_repo`` + ``create_branch`` + ``create_commit``
(``/api/repos/create``, ``/api/validate-yaml``, ``/api/models/.../preupload|branch|commit/...``; every file
is a "regular" upload, so no LFS/Xet transfer is involved). huggingface_hub reads ``HF_ENDPOINT``,
``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` once, at import, into ``huggingface_hub.constants``: the
``stand_in_hub`` fixture of ``conftest.py`` patches those attributes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

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
