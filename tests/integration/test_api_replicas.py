"""Two API processes on one store: each webhook is delivered once, and claims are atomic,
on the embedded SQLite store and on a real Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from stoker.api.app import create_app
from stoker.api.meta import open_meta_store
from stoker.config import Settings, load_settings
from tests.api_server import auth, make_key

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(90),
    # kombu's SQLAlchemy transport (the embedded broker) uses a loader SQLAlchemy 2.1
    # deprecates; not ours to fix.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]


@pytest.fixture(params=["sqlite", "redis"])
def settings(request: pytest.FixtureRequest, data_dir: Path) -> Settings:
    """Settings of one deployment: the embedded default, or Redis for broker and store."""
    api = {"poll_s": 0.05, "webhook_backoff_s": 0.05}
    if request.param == "redis":
        url = request.getfixturevalue("clean_redis")
        return load_settings(data_dir=data_dir, broker_url=url, api=api)
    return load_settings(data_dir=data_dir, api=api)


class _Receiver(BaseHTTPRequestHandler):
    received: list[str] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with type(self).lock:
            type(self).received.append(self.path)
        time.sleep(0.05)  # a slow target widens the window two deliverers could share
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def receiver() -> Iterator[str]:
    _Receiver.received = []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_two_api_processes_deliver_each_webhook_once(settings: Settings, receiver: str) -> None:
    key = auth(make_key(settings, "dev"))
    # Given two API apps on one store, both running their webhook deliverers
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings)) as two:
        # When six jobs with webhooks are submitted through one and cancelled through two
        ids = []
        for i in range(6):
            job = one.post(
                "/v1/jobs",
                headers=key,
                json={
                    "kind": "echo",
                    "params": {"text": f"job {i}"},
                    "webhook": {"url": f"{receiver}/{i}"},
                },
            )
            assert job.status_code == 202, job.text
            ids.append(job.json()["id"])
        for job_id in ids:
            assert two.post(f"/v1/jobs/{job_id}/cancel", headers=key).status_code == 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            hooks = [one.get(f"/v1/jobs/{i}", headers=key).json()["webhook"] for i in ids]
            if all(h["state"] != "pending" for h in hooks):
                break
            time.sleep(0.1)
        time.sleep(0.3)  # a few more passes of both deliverers
    # Then every webhook was delivered, once
    assert [h["state"] for h in hooks] == ["delivered"] * 6
    assert [len(h["attempts"]) for h in hooks] == [1] * 6
    assert sorted(_Receiver.received) == [f"/{i}" for i in range(6)]


def test_a_claim_is_taken_by_one_caller_until_it_expires(settings: Settings) -> None:
    stores = [open_meta_store(settings) for _ in range(4)]
    try:
        # When four processes' stores race for one claim, eight times each (a claim
        # that outlives the race: a short one could expire while a loaded machine
        # still runs it, and be taken twice, rightly)
        with ThreadPoolExecutor(8) as pool:
            won = list(pool.map(lambda i: stores[i % 4].claim("race", 30), range(32)))
        # Then exactly one wins
        assert won.count(True) == 1
        # And after a claim expires, the next caller takes it, once
        assert stores[0].claim("short", 0.3)
        time.sleep(0.5)
        assert [stores[1].claim("short", 30), stores[2].claim("short", 30)] == [True, False]
    finally:
        for store in stores:
            store.close()
