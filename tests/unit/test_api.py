"""The HTTP API in process (FastAPI's TestClient) on the embedded default: SQLite
broker and job store, local outputs, no worker. Jobs stay queued; that is enough for
auth, ownership, validation, files, limits and the error shape."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from stoker.api.app import create_app
from stoker.api.errors import ApiError
from stoker.api.routes.openai import require_deployed
from stoker.config import Settings, load_settings
from tests.api_server import auth, make_key

pytestmark = [
    pytest.mark.timeout(60),
    # kombu's SQLAlchemy transport (the embedded broker) uses a loader SQLAlchemy 2.1
    # deprecates; not ours to fix, and only this in-process test sends on it.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]


@pytest.fixture()
def settings(data_dir: Path) -> Settings:
    return load_settings(
        data_dir=data_dir,
        api={
            "max_body_bytes": 20_000,
            "max_upload_bytes": 50_000,
            "sync_wait_s": 0.5,
            "path_roots": [str(data_dir / "inbox")],
        },
    )


@pytest.fixture()
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, deliver_webhooks=False)) as c:
        yield c


@pytest.fixture()
def alice(settings: Settings) -> dict[str, str]:
    return auth(make_key(settings, "alice"))


@pytest.fixture()
def bob(settings: Settings) -> dict[str, str]:
    return auth(make_key(settings, "bob"))


def assert_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    return dict(error)


def test_requests_without_a_valid_key_get_401(client: TestClient) -> None:
    # Given no key, then a made-up key
    # When jobs are listed
    # Then both answer 401 with the JSON error shape
    assert assert_error(client.get("/v1/jobs"), 401)["code"] == "missing_api_key"
    bad = client.get("/v1/jobs", headers=auth("sk-stoker-nope"))
    assert assert_error(bad, 401)["code"] == "invalid_api_key"


def test_keys_are_stored_hashed(settings: Settings) -> None:
    # Given a new key
    key = make_key(settings, "carol")
    # When the SQLite table beside the job store is read
    db = sqlite3.connect(settings.data_dir / "jobs.sqlite")
    rows = db.execute("SELECT id, data FROM api_docs WHERE ns = 'key'").fetchall()
    db.close()
    # Then it holds the key's SHA-256 and never the key itself
    assert rows[0][0] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in rows[0][1]


def test_a_job_is_submitted_read_listed_and_cancelled_by_its_owner_only(
    client: TestClient, alice: dict[str, str], bob: dict[str, str], settings: Settings
) -> None:
    # Given alice submits an echo job
    created = client.post(
        "/v1/jobs", json={"kind": "echo", "params": {"text": "hi"}}, headers=alice
    )
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["state"] == "queued" and job["owner"] == "alice"
    # When alice and bob read it
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["id"] == job["id"]
    # Then bob gets 404 (not 403) and does not see it in his list
    assert_error(client.get(f"/v1/jobs/{job['id']}", headers=bob), 404)
    assert_error(client.post(f"/v1/jobs/{job['id']}/cancel", headers=bob), 404)
    assert client.get("/v1/jobs", headers=bob).json()["data"] == []
    # And an admin key sees it
    admin = auth(make_key(settings, "root", admin=True))
    assert client.get(f"/v1/jobs/{job['id']}", headers=admin).status_code == 200
    # And alice can cancel it
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice).json()
    assert cancelled["state"] == "cancelled"


def test_jobs_are_listed_in_pages_and_filtered(client: TestClient, alice: dict[str, str]) -> None:
    # Given three jobs of alice, one cancelled
    ids = [
        client.post(
            "/v1/jobs", json={"kind": "echo", "params": {"text": f"t{i}"}}, headers=alice
        ).json()["id"]
        for i in range(3)
    ]
    client.post(f"/v1/jobs/{ids[0]}/cancel", headers=alice)
    # When they are listed two at a time
    first = client.get("/v1/jobs?limit=2", headers=alice).json()
    second = client.get(f"/v1/jobs?limit=2&cursor={first['next_cursor']}", headers=alice).json()
    # Then the pages hold all three, newest first
    assert [j["id"] for j in first["data"] + second["data"]] == ids[::-1]
    assert first["has_more"] and not second["has_more"]
    # And a state filter keeps the cancelled one only
    only = client.get("/v1/jobs?state=cancelled&kind=echo", headers=alice).json()["data"]
    assert [j["id"] for j in only] == [ids[0]]


def test_the_same_idempotency_key_returns_the_same_job(
    client: TestClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    body = {"kind": "echo", "params": {"text": "once"}}
    first = client.post("/v1/jobs", json=body, headers={**alice, "Idempotency-Key": "k1"})
    again = client.post("/v1/jobs", json=body, headers={**alice, "Idempotency-Key": "k1"})
    other = client.post("/v1/jobs", json=body, headers={**bob, "Idempotency-Key": "k1"})
    assert first.status_code == 202 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"] != other.json()["id"]


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "../../../etc/passwd", "inbox/../../jobs.sqlite", "/tmp", "a\x00b"],
)
def test_server_side_paths_outside_the_roots_are_refused(
    client: TestClient, alice: dict[str, str], path: str
) -> None:
    # When a job names a path on the API host outside api.path_roots
    response = client.post(
        "/v1/jobs", json={"kind": "transcribe", "params": {"path": path}}, headers=alice
    )
    # Then it is refused, naming the param, before anything is read
    error = assert_error(response, 400)
    assert error["param"] == "params.path" and error["code"] == "path_not_allowed"


def test_a_symlink_out_of_a_root_is_refused(data_dir: Path) -> None:
    from stoker.api.errors import ApiError
    from stoker.api.inputs import local_path

    root = data_dir / "inbox"
    root.mkdir()
    (root / "ok.txt").write_text("x")
    (root / "escape").symlink_to("/etc")
    assert local_path("ok.txt", [root]) == (root / "ok.txt").resolve()
    with pytest.raises(ApiError):
        local_path("escape/passwd", [root])


def test_bad_input_answers_4xx_with_the_error_shape(
    client: TestClient, alice: dict[str, str]
) -> None:
    # unknown kind → 400
    unknown = client.post("/v1/jobs", json={"kind": "nope", "params": {}}, headers=alice)
    assert "unknown job kind" in assert_error(unknown, 400)["message"]
    # the capability refuses the params → 400
    refused = client.post("/v1/jobs", json={"kind": "echo", "params": {"x": 1}}, headers=alice)
    assert_error(refused, 400)
    # a field of the wrong type → 422 naming it
    wrong = client.post("/v1/jobs", json={"kind": "echo", "priority": "urgent"}, headers=alice)
    assert assert_error(wrong, 422)["param"] == "priority"
    # not JSON at all → 422
    garbage = client.post(
        "/v1/jobs", content=b"{nope", headers={**alice, "Content-Type": "application/json"}
    )
    assert_error(garbage, 422)
    # an unknown route → 404 JSON
    assert_error(client.get("/v1/nothing", headers=alice), 404)
    # a webhook to a non-http target → 400
    hook = client.post(
        "/v1/jobs",
        json={"kind": "echo", "params": {"text": "x"}, "webhook": {"url": "file:///etc/passwd"}},
        headers=alice,
    )
    assert assert_error(hook, 400)["param"] == "webhook.url"


def test_an_image_edit_form_field_stoker_does_not_know_is_refused_naming_it(
    client: TestClient, alice: dict[str, str]
) -> None:
    png = ("sketch.png", b"\x89PNG not read: refused before", "image/png")
    form = {"prompt": "a sofa", "svg": "true"}
    # A field no route parameter names is refused, not dropped by the form parser
    typo = client.post("/v1/images/edits", data=form, files={"image": png}, headers=alice)
    error = assert_error(typo, 400)
    assert (
        error["param"] == "svg"
        and "body.svg is not a field of /v1/images/edits" in (error["message"])
    )
    # and one OpenAI's models take that a pipeline has no use for passes that check
    form = {"prompt": "a sofa", "safety_identifier": "u-1", "stregth": "0.5"}
    other = client.post("/v1/images/edits", data=form, files={"image": png}, headers=alice)
    assert assert_error(other, 400)["param"] == "stregth"


def test_model_paths_are_refused_with_a_400(
    client: TestClient, alice: dict[str, str], tmp_path: Path
) -> None:
    # Given a model file that exists on the API's machine
    model = tmp_path / "x.gguf"
    model.write_bytes(b"GGUF")
    # When API requests name models by path: a job, another by a relative path, and
    # an OpenAI embeddings call
    job = {"kind": "generate", "params": {"prompt": "x", "model": str(model)}}
    relative = {"kind": "embed", "params": {"text": "x", "model": "./models/minilm"}}
    answers = [
        client.post("/v1/jobs", json=job, headers=alice),
        client.post("/v1/jobs", json=relative, headers=alice),
        client.post("/v1/embeddings", json={"input": "x", "model": "/etc/hostname"}, headers=alice),
    ]
    # Then each is a 400 saying the service takes model names only, and nothing is queued
    for answer in answers:
        assert "takes model names only" in assert_error(answer, 400)["message"]
    assert client.get("/v1/jobs", headers=alice).json()["data"] == []


def test_a_body_over_the_limit_gets_413(client: TestClient, alice: dict[str, str]) -> None:
    big = {"kind": "echo", "params": {"text": "x" * 30_000}}
    assert_error(client.post("/v1/jobs", json=big, headers=alice), 413)
    upload = client.post(
        "/v1/files",
        files={"file": ("a.jsonl", b"x" * 60_000)},
        data={"purpose": "batch"},
        headers=alice,
    )
    assert_error(upload, 413)


def test_files_are_uploaded_read_listed_and_deleted_by_their_owner(
    client: TestClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    # Given alice uploads a file
    data = b'{"custom_id": "a"}\n' * 100
    created = client.post(
        "/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"}, headers=alice
    )
    assert created.status_code == 200, created.text
    obj = created.json()
    assert obj["bytes"] == len(data) and obj["filename"] == "in.jsonl"
    # Then she reads it back and lists it; bob sees nothing
    assert client.get(f"/v1/files/{obj['id']}/content", headers=alice).content == data
    assert [f["id"] for f in client.get("/v1/files", headers=alice).json()["data"]] == [obj["id"]]
    assert_error(client.get(f"/v1/files/{obj['id']}/content", headers=bob), 404)
    assert client.get("/v1/files", headers=bob).json()["data"] == []
    # And a job can take it as its input: the capability reads the uploaded bytes
    job = client.post("/v1/jobs", json={"kind": "transcribe", "input": obj["id"]}, headers=alice)
    assert "in.jsonl" in assert_error(job, 400)["message"]  # not a recording
    # And deleting it removes it
    assert client.delete(f"/v1/files/{obj['id']}", headers=alice).json()["deleted"] is True
    assert_error(client.get(f"/v1/files/{obj['id']}", headers=alice), 404)


def test_a_full_queue_answers_429_with_retry_after(data_dir: Path, alice: dict[str, str]) -> None:
    settings = load_settings(data_dir=data_dir, api={"max_queue_depth": {"echo": 1}})
    with TestClient(create_app(settings, deliver_webhooks=False)) as client:
        body = {"kind": "echo", "params": {"text": "one"}}
        assert client.post("/v1/jobs", json=body, headers=alice).status_code == 202
        full = client.post(
            "/v1/jobs", json={"kind": "echo", "params": {"text": "two"}}, headers=alice
        )
    assert assert_error(full, 429)["code"] == "queue_full"
    assert full.headers["Retry-After"] == "5"


def test_sync_routes_answer_503_or_504_never_hang(
    client: TestClient, alice: dict[str, str]
) -> None:
    # A capability that is not deployed here answers 503; one with no worker, 504
    chat = client.post(
        "/v1/chat/completions",
        headers=alice,
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert_error(chat, 503 if chat.status_code == 503 else 504)
    with pytest.raises(ApiError) as refused:
        require_deployed("teleport")
    assert refused.value.status == 503
    # No worker serves speak: the wait ends in 504 naming the job
    speech = client.post(
        "/v1/audio/speech",
        json={"input": "Hello.", "voice": "alloy", "response_format": "wav"},
        headers=alice,
    )
    error = assert_error(speech, 504)
    assert speech.headers["X-Stoker-Job-Id"] in error["message"]
    # A malformed body is refused at once
    assert_error(client.post("/v1/audio/speech", json={"voice": "alloy"}, headers=alice), 400)


def test_health_readiness_and_metrics(client: TestClient, alice: dict[str, str]) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    client.post("/v1/jobs", json={"kind": "echo", "params": {"text": "m"}}, headers=alice)
    text = client.get("/metrics").text
    assert 'stoker_jobs_submitted_total{kind="echo"} 1.0' in text
    assert 'stoker_queue_depth{kind="echo"} 1.0' in text
    assert "stoker_api_request_seconds_bucket" in text
    assert 'stoker_jobs{kind="echo",state="queued"} 1.0' in text


def test_metrics_count_jobs_by_state_and_time_the_ended_ones(
    client: TestClient, alice: dict[str, str]
) -> None:
    # Given three echo jobs, two of them cancelled
    ids = [
        client.post(
            "/v1/jobs", json={"kind": "echo", "params": {"text": str(i)}}, headers=alice
        ).json()["id"]
        for i in range(3)
    ]
    for job_id in ids[:2]:
        client.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
    # When the ended jobs are read (twice) and the metrics scraped
    for job_id in ids * 2:
        client.get(f"/v1/jobs/{job_id}", headers=alice)
    text = client.get("/metrics").text
    # Then jobs are counted by kind and state, and each ended job is timed once
    assert 'stoker_jobs{kind="echo",state="queued"} 1.0' in text
    assert 'stoker_jobs{kind="echo",state="cancelled"} 2.0' in text
    assert 'stoker_job_duration_seconds_count{kind="echo",state="cancelled"} 2.0' in text


def test_events_of_an_ended_job_end_at_once(client: TestClient, alice: dict[str, str]) -> None:
    # Given a job that was cancelled
    job = client.post(
        "/v1/jobs", json={"kind": "echo", "params": {"text": "e"}}, headers=alice
    ).json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice)
    # When its events are read
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=alice) as response:
        text = "".join(response.iter_text())
    # Then there is one event, the end, with the final state
    assert response.headers["content-type"].startswith("text/event-stream")
    assert text.count("event: ") == 1 and text.startswith("event: end")
    assert '"state": "cancelled"' in text


def test_an_uploaded_recording_is_a_job_input(
    client: TestClient, alice: dict[str, str], tmp_path: Path
) -> None:
    from tests.media_files import tone_wav

    wav = tone_wav(tmp_path / "tone.wav", 1.0, 16_000, 1).read_bytes()
    obj = client.post(
        "/v1/files", files={"file": ("tone.wav", wav)}, data={"purpose": "user_data"}, headers=alice
    ).json()
    job = client.post("/v1/jobs", json={"kind": "transcribe", "input": obj["id"]}, headers=alice)
    assert job.status_code == 202, job.text
    assert job.json()["params"]["name"] == "tone.wav"


def test_a_streamed_body_over_the_limit_gets_413(client: TestClient, alice: dict[str, str]) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"kind": "echo", "params": {"text": "'
        for _ in range(30):
            yield b"x" * 1000
        yield b'"}}'

    response = client.post(
        "/v1/jobs", content=chunks(), headers={**alice, "Content-Type": "application/json"}
    )
    assert_error(response, 413)


def _jsonl(*lines: dict[str, Any]) -> bytes:
    return "\n".join(json.dumps(line) for line in lines).encode()


def _speech(custom_id: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/audio/speech",
        "body": {"input": "Hi.", "voice": "alloy"},
    }


def _speech_batch(client: TestClient, headers: dict[str, str], *custom_ids: str) -> Any:
    """An OpenAI batch of one speech line per custom id, created; its JSON."""
    upload = client.post(
        "/v1/files",
        files={"file": ("b.jsonl", _jsonl(*(_speech(c) for c in custom_ids)))},
        data={"purpose": "batch"},
        headers=headers,
    ).json()
    return client.post(
        "/v1/batches",
        headers=headers,
        json={
            "input_file_id": upload["id"],
            "endpoint": "/v1/audio/speech",
            "completion_window": "24h",
        },
    ).json()


def test_batches_refuse_duplicate_ids_too_many_lines_and_unknown_endpoints(
    data_dir: Path, alice: dict[str, str]
) -> None:
    settings = load_settings(
        data_dir=data_dir, api={"max_batch_lines": 2, "max_queue_depth": {"speak": 1}}
    )
    with TestClient(create_app(settings, deliver_webhooks=False)) as client:

        def batch(data: bytes, endpoint: str = "/v1/audio/speech") -> Any:
            upload = client.post(
                "/v1/files",
                files={"file": ("b.jsonl", data)},
                data={"purpose": "batch"},
                headers=alice,
            ).json()
            return client.post(
                "/v1/batches",
                headers=alice,
                json={
                    "input_file_id": upload["id"],
                    "endpoint": endpoint,
                    "completion_window": "24h",
                },
            )

        twice = batch(_jsonl(_speech("a"), _speech("a")))
        assert assert_error(twice, 400)["code"] == "duplicate_custom_id"
        many = batch(_jsonl(_speech("a"), _speech("b"), _speech("c")))
        assert assert_error(many, 400)["code"] == "too_many_lines"
        assert assert_error(batch(b"{}", "/v1/moderations"), 400)["param"] == "endpoint"
        # A good one is accepted and in progress (no worker here)
        ok = batch(_jsonl(_speech("a"), _speech("b")))
        assert ok.status_code == 200, ok.text
        assert ok.json()["status"] == "in_progress"
        assert ok.json()["request_counts"] == {"total": 2, "completed": 0, "failed": 0}
        # And the speak queue is now over its limit: the next batch waits its turn
        assert_error(batch(_jsonl(_speech("c"))), 429)


def test_keys_are_created_listed_and_revoked_from_the_cli(data_dir: Path) -> None:
    from typer.testing import CliRunner

    from stoker.cli import app

    runner = CliRunner()
    env = {"STOKER_DATA_DIR": str(data_dir)}
    created = runner.invoke(app, ["keys", "create", "dave", "--admin"], env=env)
    assert created.exit_code == 0, created.output
    key = next(line for line in created.output.splitlines() if line.startswith("sk-stoker-"))
    listed = runner.invoke(app, ["keys", "list", "--json"], env=env)
    assert json.loads(listed.output)[0]["name"] == "dave"
    assert key not in listed.output
    settings = load_settings(data_dir=data_dir)
    with TestClient(create_app(settings, deliver_webhooks=False)) as client:
        assert client.get("/v1/jobs", headers=auth(key)).status_code == 200
        assert runner.invoke(app, ["keys", "revoke", "dave"], env=env).exit_code == 0
        assert_error(client.get("/v1/jobs", headers=auth(key)), 401)


def test_a_batch_past_its_window_expires_and_reports_what_did_not_run(
    client: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from stoker.api import batches

    # Given a batch of two speech lines that no worker takes
    created = _speech_batch(client, alice, "a", "b")
    assert created["status"] == "in_progress" and created["expired_at"] is None
    # When it is read after its 24 h window
    later = time.time() + batches.WINDOW_S + 1
    monkeypatch.setattr(batches.time, "time", lambda: later)
    expired = client.get(f"/v1/batches/{created['id']}", headers=alice).json()
    # Then it expired, and its error file says each line expired before it ran
    assert expired["status"] == "expired" and expired["expired_at"] == int(later)
    assert expired["request_counts"]["total"] == 2
    errors = client.get(f"/v1/files/{expired['error_file_id']}/content", headers=alice).text
    lines = [json.loads(line) for line in errors.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["a", "b"]
    assert {line["error"]["code"] for line in lines} == {"batch_expired"}


def test_a_batch_whose_files_take_long_is_finalizing_and_finalized_once(
    client: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from stoker.api import batches

    # Given a batch whose output files are slow to write (held until released)
    release, calls = threading.Event(), []
    finalize = batches.finalize

    def slow_finalize(*args: Any) -> Any:
        calls.append(args[1].id)
        assert release.wait(30), "the test never released finalize"
        return finalize(*args)

    monkeypatch.setattr(batches, "finalize", slow_finalize)
    monkeypatch.setattr(batches, "FINALIZE_WAIT_S", 0.0)
    created = _speech_batch(client, alice, "a", "b")

    # When it is cancelled and read, and listed, while its files are being written
    url = f"/v1/batches/{created['id']}"
    first = client.post(f"{url}/cancel", headers=alice).json()
    again = client.get(url, headers=alice).json()
    listed = client.get("/v1/batches", headers=alice).json()["data"]

    # Then each answers at once that it is cancelling, and the files are written once
    assert [first["status"], again["status"], listed[0]["status"]] == ["cancelling"] * 3
    assert calls == [created["id"]] and again["error_file_id"] is None
    # And once they are written, a read says cancelled with the error file
    release.set()
    for _ in range(200):  # the background run ends within moments of the release
        done = client.get(url, headers=alice).json()
        if done["status"] == "cancelled":
            break
        time.sleep(0.05)
    assert done["status"] == "cancelled" and done["error_file_id"] is not None
    assert calls == [created["id"]]


def test_jobs_of_a_batch_are_listed_by_batch_and_left_out_of_the_top_level(
    client: TestClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    # Given an echo job and an OpenAI batch of two speech lines (a job with two jobs)
    echo = client.post("/v1/jobs", json={"kind": "echo", "params": {"text": "hi"}}, headers=alice)
    batch = _speech_batch(client, alice, "a", "b")

    def listed(query: str, headers: dict[str, str] = alice) -> list[str]:
        answer = client.get(f"/v1/jobs?{query}", headers=headers)
        assert answer.status_code == 200, answer.text
        return [j["id"] for j in answer.json()["data"]]

    # Then every job is listed by default, the batch and the echo job at the top level,
    # and the batch's own two with batch=
    kids = listed(f"batch={batch['id']}")
    assert len(kids) == 2 and batch["id"] not in kids
    assert listed("top_level=true") == [batch["id"], echo.json()["id"]]
    assert set(listed("")) == {batch["id"], echo.json()["id"], *kids}
    # And another owner's batch is a 404; both filters at once a 400
    assert_error(client.get(f"/v1/jobs?batch={batch['id']}", headers=bob), 404)
    both = client.get(f"/v1/jobs?batch={batch['id']}&top_level=true", headers=alice)
    assert assert_error(both, 400)["param"] == "batch"
