"""The Hub emulator answers huggingface_hub's client as the Hub does for the cases the sharing tests rely on.

Proves the emulator's errors map to the client's exceptions (so "not found" paths are exercised honestly), that
writes need a token and that the server is gone after its fixture. Does not prove the real Hub behaves the same."""

import socket
from urllib.parse import urlsplit

import httpx2
import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from hub.fake_hub import FakeHub


def test_round_trip_and_errors(fake_hub, tmp_path):
    api = HfApi(endpoint=fake_hub.url, token="hf_test")
    assert api.create_repo("org/x").repo_id == "org/x"
    assert api.create_repo("org/x", exist_ok=True).repo_id == "org/x"
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("org/x")
    assert err.value.response.status_code == 409
    commit = api.upload_file(path_or_fileobj=b"hello", path_in_repo="sub/a.txt", repo_id="org/x")
    assert api.model_info("org/x").sha == commit.oid
    assert sorted(api.list_repo_files("org/x")) == [".gitattributes", "sub/a.txt"]
    assert [e.path for e in api.list_repo_tree("org/x")] == ["sub", ".gitattributes"]
    path = hf_hub_download("org/x", "sub/a.txt", endpoint=fake_hub.url, cache_dir=tmp_path, revision=commit.oid)
    assert open(path, "rb").read() == b"hello"
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/x", revision="0" * 40)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("org/x", "missing.txt", endpoint=fake_hub.url, cache_dir=tmp_path)


def test_writes_need_a_token(fake_hub):
    response = httpx2.post(f"{fake_hub.url}/api/repos/create", json={"name": "x", "organization": "org"})
    assert response.status_code == 401 and "org/x" not in fake_hub.repos


def test_server_is_gone_after_stop():
    with FakeHub() as hub:
        port = urlsplit(hub.url).port
    with socket.socket() as sock, pytest.raises(OSError):
        sock.settimeout(2)
        sock.connect(("127.0.0.1", port))
