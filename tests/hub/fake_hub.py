"""A local Hugging Face Hub emulator on 127.0.0.1 for tests (standard library only), and client helpers.

It implements the few endpoints huggingface_hub 2.4 calls for what sam_hf does with the Hub:
- `create_repo`: POST /api/repos/create (a new repo gets a first commit with a `.gitattributes`);
- `create_commit` / `upload_folder`: POST /api/models/{repo}/preupload/{rev}, then for "lfs" files the LFS batch
  API (POST /{repo}.git/info/lfs/objects/batch, PUT to the returned href), then POST .../commit/{rev} (NDJSON);
  README.md is checked on POST /api/validate-yaml;
- `model_info` / `repo_info` / revision resolution: GET /api/models/{repo}[/revision/{rev}];
- `list_repo_tree` / `list_repo_files` / `snapshot_download`: GET /api/models/{repo}/tree/{rev}[/{path}];
- `hf_hub_download`: HEAD and GET /{repo}/resolve/{rev}/{path} with ETag (git blob sha1, or sha256 for LFS
  files, also as X-Linked-Etag), X-Repo-Commit, Content-Length, and `bytes=N-` ranges;
- errors as the Hub sends them: 404 with X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound.
Writes need an `Authorization: Bearer ...` header (any token); reads and YAML validation are public. Safetensors and other binary
weights go through LFS, as on the Hub. Clients must not use Xet (`HF_HUB_DISABLE_XET=1`): it is not emulated.
Not emulated either: auth scopes, private or gated repos, pull requests, branches other than `main`, pagination.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".npz", ".npy")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
ROUTES = [  # (method, pattern, handler name)
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("GET", rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
    ("GET", rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", "model_info"),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "lfs_upload"),
    ("GET", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("HEAD", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]

WRITES = {"create_repo", "preupload", "commit", "lfs_batch"}  # need a bearer token; LFS uploads use signed URLs


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None, **extra):
        super().__init__(message)
        self.status, self.code, self.commit, self.extra = status, code, commit, extra


@dataclass
class Blob:
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def git_bytes(self) -> bytes:  # what git stores: the file, or the LFS pointer to it
        if not self.lfs:
            return self.content
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.content)}\n".encode()

    @property
    def git_oid(self) -> str:
        data = self.git_bytes
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)  # commit sha -> tree
    main: str = ""

    def resolve(self, rev: str) -> tuple[str, dict[str, Blob]]:
        sha = self.main if rev == "main" else rev
        if sha not in self.commits:
            raise HubError(404, f"Revision {rev!r} not found in {self.repo_id}", "RevisionNotFound")
        return sha, self.commits[sha]

    def add_commit(self, tree: dict[str, Blob], summary: str) -> str:
        digest = hashlib.sha1(f"{self.main}\n{summary}\n{time.time_ns()}".encode())
        for path in sorted(tree):
            digest.update(f"{path}:{tree[path].git_oid}".encode())
        sha = digest.hexdigest()
        self.commits[sha], self.main = tree, sha
        return sha


class FakeHub:
    """The emulator: `with FakeHub() as hub:` serves on `hub.url` until the block ends (or `hub.stop()`)."""

    def __init__(self, *, user: str = "test-user") -> None:
        self.user = user
        self.repos: dict[str, Repo] = {}
        self.lfs_store: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self.lock = threading.Lock()
        self._secret = os.urandom(16).hex()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake Hub is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: a free port chosen by the OS
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        """The files of a repo at a revision (for assertions)."""
        return {path: blob.content for path, blob in self.repos[repo_id].resolve(rev)[1].items()}

    # endpoints: each takes (handler, match groups, body) and returns (status, headers, body bytes or JSON-able)
    def _repo(self, repo_id: str) -> Repo:
        if repo_id not in self.repos:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return self.repos[repo_id]

    def create_repo(self, req, groups, body):
        payload = json.loads(body)
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        if payload.get("type", "model") != "model":
            raise HubError(400, "the fake Hub only hosts model repos")
        if repo_id in self.repos:
            raise HubError(409, f"You already created this model repo: {repo_id}", url=f"{self.url}/{repo_id}")
        repo = self.repos[repo_id] = Repo(repo_id)
        repo.add_commit({".gitattributes": Blob(GITATTRIBUTES, lfs=False)}, "initial commit")
        return 200, {}, {"url": f"{self.url}/{repo_id}", "name": repo_id}

    def validate_yaml(self, req, groups, body):
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, flags=re.DOTALL)
        if match and not isinstance(yaml.safe_load(match.group(1)) or {}, dict):
            raise HubError(400, "README.md metadata must be a YAML mapping")
        return 200, {}, {"errors": [], "warnings": []}

    def whoami(self, req, groups, body):
        return 200, {}, {"type": "user", "name": self.user, "orgs": []}

    def preupload(self, req, groups, body):
        self._repo(groups["repo"]).resolve(unquote(groups["rev"]))
        files = json.loads(body)["files"]
        modes = [{"path": f["path"], "shouldIgnore": False,
                  "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) or f["size"] >= LFS_MIN_SIZE else "regular"}
                 for f in files]
        return 200, {}, {"files": modes}

    def lfs_batch(self, req, groups, body):
        self._repo(groups["repo"])
        payload = json.loads(body)
        if payload.get("operation") != "upload":
            raise HubError(400, "only LFS uploads are emulated")
        objects = [{"oid": o["oid"], "size": o["size"], "authenticated": True,
                    **({} if o["oid"] in self.lfs_store else {"actions": {"upload": {"href": self._signed_upload_url(o["oid"])}}})}
                   for o in payload["objects"]]
        return 200, {}, {"transfer": "basic", "objects": objects}

    def _signed_upload_url(self, oid: str) -> str:  # like the Hub's pre-signed storage URLs: no bearer token
        return f"{self.url}/lfs-upload/{oid}?signature={hashlib.sha256((self._secret + oid).encode()).hexdigest()}"

    def lfs_upload(self, req, groups, body):
        if req.query.get("signature", [""])[0] != hashlib.sha256((self._secret + groups["oid"]).encode()).hexdigest():
            raise HubError(403, "LFS upload URL signature is invalid")
        if hashlib.sha256(body).hexdigest() != groups["oid"]:
            raise HubError(400, "uploaded LFS content does not match its sha256")
        self.lfs_store[groups["oid"]] = body
        return 200, {}, b""

    def commit(self, req, groups, body):
        repo = self._repo(groups["repo"])
        if unquote(groups["rev"]) != "main" or "create_pr" in req.query:
            raise HubError(400, "the fake Hub only commits to main")
        tree = dict(repo.resolve("main")[1])
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit payload must start with a header line")
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                tree[value["path"]] = Blob(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                if value["oid"] not in self.lfs_store:
                    raise HubError(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                tree[value["path"]] = Blob(self.lfs_store[value["oid"]], lfs=True)
            elif key == "deletedFile":
                tree.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                tree = {p: b for p, b in tree.items() if not p.startswith(prefix)}
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        sha = repo.add_commit(tree, lines[0]["value"].get("summary", ""))
        return 200, {}, {"commitUrl": f"{self.url}/{repo.repo_id}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None}

    def model_info(self, req, groups, body):
        repo = self._repo(groups["repo"])
        sha, tree = repo.resolve(unquote(groups["rev"] or "main"))
        info = {"id": repo.repo_id, "modelId": repo.repo_id, "sha": sha, "private": False, "tags": [],
                "siblings": [{"rfilename": path} for path in sorted(tree)]}
        card = re.match(r"^---\n(.*?)\n---\n", tree["README.md"].content.decode(), flags=re.DOTALL) if "README.md" in tree else None
        if card:
            data = yaml.safe_load(card.group(1)) or {}
            info.update(cardData=data, tags=data.get("tags", []), pipeline_tag=data.get("pipeline_tag"),
                        library_name=data.get("library_name"))
        return 200, {}, info

    def tree(self, req, groups, body):
        sha, tree = self._repo(groups["repo"]).resolve(unquote(groups["rev"]))
        prefix = unquote(groups["path"] or "").strip("/")
        prefix = prefix + "/" if prefix else ""
        recursive = req.query.get("recursive", ["false"])[0].lower() == "true"
        entries, folders = [], set()
        for path in sorted(p for p in tree if p.startswith(prefix)):
            rest = path[len(prefix):].split("/")
            for depth in range(1, len(rest) if recursive else min(len(rest), 2)):
                folders.add(prefix + "/".join(rest[:depth]))
            if recursive or len(rest) == 1:
                blob = tree[path]
                entry = {"type": "file", "path": path, "oid": blob.git_oid, "size": len(blob.content)}
                if blob.lfs:
                    entry["lfs"] = {"oid": blob.sha256, "size": len(blob.content), "pointerSize": len(blob.git_bytes)}
                entries.append(entry)
        if prefix and not entries and not folders:
            raise HubError(404, f"{prefix} not found at {sha}", "EntryNotFound", commit=sha)
        folder_entries = [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()} for f in sorted(folders)]
        return 200, {}, folder_entries + entries

    def resolve(self, req, groups, body):
        sha, tree = self._repo(groups["repo"]).resolve(unquote(groups["rev"]))
        path = unquote(groups["path"])
        if path not in tree:
            raise HubError(404, f"{path} not found at {sha}", "EntryNotFound", commit=sha)
        blob = tree[path]
        etag = f'"{blob.sha256 if blob.lfs else blob.git_oid}"'
        headers = {"ETag": etag, "X-Repo-Commit": sha, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if blob.lfs:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(len(blob.content))})
        content, status = blob.content, 200
        start = re.fullmatch(r"bytes=(\d+)-", req.headers.get("Range", ""))
        if start and int(start.group(1)) < len(content):
            first = int(start.group(1))
            headers["Content-Range"] = f"bytes {first}-{len(content) - 1}/{len(content)}"
            content, status = content[first:], 206
        return status, headers, content


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle keep-alive connection is closed after this many seconds

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        self.query = parse_qs(parts.query)
        body = self._body() if method in ("POST", "PUT") else b""
        self.hub.requests.append((method, parts.path))
        try:
            for route_method, pattern, name in ROUTES:
                match = re.fullmatch(pattern, parts.path)
                if route_method == method and match:
                    if name in WRITES and not self.headers.get("Authorization", "").startswith("Bearer "):
                        raise HubError(401, "Invalid credentials in Authorization header")
                    with self.hub.lock:
                        status, headers, payload = getattr(self.hub, name)(self, match.groupdict(), body)
                    break
            else:
                raise HubError(404, f"the fake Hub has no endpoint {method} {parts.path}")
        except HubError as err:
            status, payload = err.status, {"error": str(err), **err.extra}
            headers = {"X-Error-Message": str(err), **({"X-Error-Code": err.code} if err.code else {}),
                       **({"X-Repo-Commit": err.commit} if err.commit else {})}
        if not isinstance(payload, bytes):
            payload, headers = json.dumps(payload).encode(), {"Content-Type": "application/json", **headers}
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

@pytest.fixture
def fake_hub():
    """A fresh, empty fake Hub for one test; always shut down afterwards."""
    with FakeHub() as hub:
        yield hub
