"""Helpers for API tests: an app on embedded settings, keys, and uvicorn on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stoker.api.keys import create_key
from stoker.api.meta import open_meta_store
from stoker.config import Settings


def make_key(settings: Settings, name: str, *, admin: bool = False) -> str:
    """A new API key named ``name`` in the deployment of ``settings``."""
    store = open_meta_store(settings)
    try:
        return create_key(store, name, admin=admin)[0]
    finally:
        store.close()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def api_server(env: dict[str, str], workdir: Path) -> Iterator[str]:
    """`stoker api` as a subprocess on a free loopback port; yields its base URL."""
    port = _free_port()
    log = workdir / "api.log"
    cmd = [sys.executable, "-m", "stoker.cli", "api", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"stoker api exited:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"stoker api not up after 30 s:\n{log.read_text(errors='replace')}")
