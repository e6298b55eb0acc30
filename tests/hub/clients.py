"""Client processes for the fake Hub: separate Python processes configured by environment variables, as a
user's would be (huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest


def client_env(*, hub_url: str | None, hf_home: str | os.PathLike, offline: bool = False) -> dict[str, str]:
    """Environment of a client process: the fake Hub as endpoint, a private HF_HOME, a dummy token, no Xet."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_")) and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(HF_HOME=str(hf_home), HF_TOKEN="hf_fake_token_for_tests", HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1,localhost",
               OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    if hub_url is not None:
        env["HF_ENDPOINT"] = hub_url
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def run_client(code: str, *, env: dict[str, str], args: list[str] | tuple[str, ...] = (), cwd: str | os.PathLike | None = None,
               timeout: float = 240) -> str:
    """Run `code` with `python -c` (`sys.argv[1:]` = args) in `env`; return its stdout or fail the test with its output."""
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"client process failed ({result.returncode}):\n{result.stdout}\n{result.stderr}", pytrace=False)
    return result.stdout


def closed_port_url() -> str:
    """An http://127.0.0.1 URL where nothing listens (a port the OS gave out, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
