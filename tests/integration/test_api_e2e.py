"""The HTTP API as a user runs it: `stoker api` under uvicorn on loopback, a real
`stoker worker` with the Piper voice, Redis and an S3-protocol server, driven by the
official ``openai`` client and by plain HTTP."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import pytest

from stoker.client import Stoker
from tests.api_server import api_server, auth, make_key
from tests.deployment import Deployment

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture()
def api(deployment: Deployment) -> Iterator[tuple[str, str]]:
    """(base URL, key of owner "dev") of an API over the deployment, with a speak worker."""
    deployment.env["STOKER_API__POLL_S"] = "0.2"
    deployment.env["STOKER_API__WEBHOOK_BACKOFF_S"] = "0.2"
    deployment.start_worker("speak")
    key = make_key(deployment.settings(), "dev")
    with api_server(deployment.env, deployment.workdir) as url:
        yield url, key


def speech_line(custom_id: str, text: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/audio/speech",
        "body": {"model": "tts-1", "input": text, "voice": "alloy", "response_format": "wav"},
    }


def wait_for(fetch: Any, done: Any, timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fetch()
        if done(value):
            return value
        time.sleep(0.3)
    raise TimeoutError(f"not done after {timeout_s}s: {value}")


def test_the_openai_client_runs_a_speech_batch(api: tuple[str, str]) -> None:
    from openai import OpenAI

    url, key = api
    client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    # Given a JSONL file of two speech requests, one without input, and one broken line
    lines = [
        json.dumps(speech_line("a", "Hello from the batch.")),
        json.dumps(speech_line("b", "A second line of speech.")),
        json.dumps({**speech_line("c", ""), "body": {"voice": "alloy"}}),
        "{not json",
    ]
    upload = client.files.create(file=("in.jsonl", "\n".join(lines).encode()), purpose="batch")
    assert upload.bytes > 0 and upload.purpose == "batch"

    # When a batch runs it
    batch = client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/audio/speech",
        completion_window="24h",
        metadata={"run": "e2e"},
    )
    assert batch.status == "in_progress" and batch.request_counts.total == 4
    done = wait_for(
        lambda: client.batches.retrieve(batch.id),
        lambda b: b.status in ("completed", "failed", "cancelled"),
    )

    # Then it completed, two requests succeeded and two failed
    assert done.status == "completed", done
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 2)
    assert done.metadata == {"run": "e2e"}
    output = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in output) == ["a", "b"]
    for line in output:
        assert line["response"]["status_code"] == 200 and line["error"] is None
        audio = line["response"]["body"]["outputs"][0]
        assert audio["name"] == "speech.wav" and audio["url"].startswith("http")
        assert httpx.get(audio["url"]).content[:4] == b"RIFF"  # presigned URL on S3
    # And the error file names the line without input and the broken one
    errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == ["c", None]
    assert "body.input" in errors[0]["response"]["body"]["error"]["message"]
    assert "line 4 is not JSON" in errors[1]["response"]["body"]["error"]["message"]
    # And the batch is listed
    assert batch.id in [b.id for b in client.batches.list(limit=10).data]
    # And the synchronous speech route answers with the audio itself
    speech = client.audio.speech.create(
        model="tts-1", voice="alloy", input="Right away.", response_format="wav"
    )
    assert speech.content[:4] == b"RIFF"


def test_a_batch_can_be_cancelled_and_another_key_cannot_see_it(
    api: tuple[str, str], deployment: Deployment
) -> None:
    from openai import NotFoundError, OpenAI

    url, key = api
    client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    text = "This sentence is long enough to keep the worker busy for a while. " * 20
    lines = "\n".join(json.dumps(speech_line(str(i), text + str(i))) for i in range(6))
    upload = client.files.create(file=("in.jsonl", lines.encode()), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/audio/speech", completion_window="24h"
    )
    # When another owner looks, they get 404 for the batch and its file
    other = OpenAI(
        base_url=f"{url}/v1", api_key=make_key(deployment.settings(), "eve"), max_retries=0
    )
    with pytest.raises(NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(NotFoundError):
        other.files.content(upload.id)
    # When the owner cancels it
    cancelled = client.batches.cancel(batch.id)
    # Then it is cancelled and the unfinished requests are in the error file
    assert cancelled.status == "cancelled"
    errors = client.files.content(cancelled.error_file_id).text.splitlines()
    assert errors and all(json.loads(e)["error"]["code"] == "batch_cancelled" for e in errors)
    # And its job cannot be retried: an OpenAI batch's files are final
    retry = httpx.post(f"{url}/v1/jobs/{batch.id}/retry", headers=auth(key))
    assert retry.status_code == 400 and "is an OpenAI batch" in retry.text


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []
    fail_first = 1

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        status = 500 if len(type(self).received) <= type(self).fail_first else 200
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_job_over_http_sends_a_signed_webhook_retried_after_a_failure(
    api: tuple[str, str],
) -> None:
    url, key = api
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = f"http://127.0.0.1:{server.server_port}/hook"
    try:
        # Given a speak job with a webhook whose target fails once
        job = httpx.post(
            f"{url}/v1/jobs",
            headers=auth(key),
            json={
                "kind": "speak",
                "params": {"text": "Webhooks are signed."},
                "webhook": {"url": target, "secret": "s3cret"},
            },
        ).json()
        # When its events are followed until it ends
        with httpx.stream(
            "GET", f"{url}/v1/jobs/{job['id']}/events", headers=auth(key), timeout=60
        ) as events:
            names = [line[7:] for line in events.iter_lines() if line.startswith("event: ")]
        assert names[-1] == "end" and set(names[:-1]) <= {"update"}
        final = wait_for(
            lambda: httpx.get(f"{url}/v1/jobs/{job['id']}", headers=auth(key)).json(),
            lambda j: j["webhook"]["state"] != "pending",
        )
    finally:
        server.shutdown()
        server.server_close()
    # Then the second attempt was delivered, signed over the exact body
    assert final["state"] == "succeeded" and final["webhook"]["state"] == "delivered"
    assert [a["status_code"] for a in final["webhook"]["attempts"]] == [500, 200]
    headers, body = _Receiver.received[-1]
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Stoker-Signature"] == expected
    event = json.loads(body)
    assert event["type"] == "job.succeeded" and event["job_id"] == job["id"]
    # And the job's outputs are presigned URLs
    assert final["outputs"][0]["url"].startswith("http")


def test_an_ended_job_is_deleted_over_http_by_its_owner_only(
    api: tuple[str, str], deployment: Deployment
) -> None:
    url, key = api
    eve = make_key(deployment.settings(), "eve")
    with httpx.Client(base_url=url, headers=auth(key), timeout=30) as http:
        # Given an echo job, which no worker here takes, so it stays queued
        queued = http.post("/v1/jobs", json={"kind": "echo", "params": {"text": "hi"}}).json()
        # Then deleting it is refused with what to do, and it stays
        refused = http.delete(f"/v1/jobs/{queued['id']}")
        assert refused.status_code == 400
        assert "only an ended job can be deleted: cancel it first" in refused.text
        assert http.get(f"/v1/jobs/{queued['id']}").json()["state"] == "queued"
        # Given a speak job that succeeded, with its outputs in S3
        job = http.post("/v1/jobs", json={"kind": "speak", "params": {"text": "Delete me."}})
        job_id = job.json()["id"]
        done = wait_for(
            lambda: http.get(f"/v1/jobs/{job_id}").json(), lambda j: j["state"] == "succeeded"
        )
        with Stoker(deployment.settings()) as client:
            assert [o.key for o in client.storage.list(f"jobs/{job_id}/")]
            # Then each output downloads through the API with the owner's key, as stored
            audio = done["outputs"][0]
            assert audio["download"] == f"/v1/jobs/{job_id}/outputs/{audio['name']}"
            got = http.get(audio["download"])
            assert got.status_code == 200, got.text
            record = client.status(job_id)
            assert got.content == client.storage.get_bytes(record.outputs[0].key)
            assert got.headers["content-type"] == audio["content_type"]
            assert got.headers["content-length"] == str(audio["size_bytes"])
            assert "filename*=UTF-8''speech.wav" in got.headers["content-disposition"]
            # And not with another owner's key, nor by a name the job has not made
            assert http.get(audio["download"], headers=auth(eve)).status_code == 404
            missing = http.get(f"/v1/jobs/{job_id}/outputs/nope.wav")
            assert missing.status_code == 404 and "its outputs: speech.wav" in missing.text
            # When another owner deletes it: 404, as for a job they cannot see
            assert http.delete(f"/v1/jobs/{job_id}", headers=auth(eve)).status_code == 404
            # When its owner does, it is gone, its files with it
            deleted = http.delete(f"/v1/jobs/{job_id}")
            assert deleted.status_code == 200, deleted.text
            assert deleted.json() == {
                "id": job_id, "object": "job", "deleted": True, "jobs_deleted": 1
            }  # fmt: skip
            assert http.get(f"/v1/jobs/{job_id}").status_code == 404
            assert http.get(audio["download"]).status_code == 404
            assert list(client.storage.list(f"jobs/{job_id}/")) == []
            assert job_id not in [j["id"] for j in http.get("/v1/jobs").json()["data"]]


def test_an_openai_batch_deleted_from_the_cli_leaves_the_batch_list(
    api: tuple[str, str], deployment: Deployment
) -> None:
    from openai import NotFoundError, OpenAI

    url, key = api
    client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    upload = client.files.create(
        file=("in.jsonl", json.dumps(speech_line("a", "One line.")).encode()), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/audio/speech", completion_window="24h"
    )
    wait_for(lambda: client.batches.retrieve(batch.id), lambda b: b.status == "completed")
    kept = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/audio/speech", completion_window="24h"
    )
    # When the batch's job is deleted outside the API (its jobs with it)
    with Stoker(deployment.settings()) as stoker:
        wait_for(lambda: stoker.status(kept.id), lambda r: r.state.terminal)
        assert len(stoker.delete(batch.id)) == 2
    # Then the API lists the other batch only, and the deleted one is not found
    assert [b.id for b in client.batches.list().data] == [kept.id]
    with pytest.raises(NotFoundError):
        client.batches.retrieve(batch.id)


def test_the_openai_client_transcribes_an_upload_synchronously(
    api: tuple[str, str], deployment: Deployment
) -> None:
    from openai import OpenAI

    from tests.media_files import speech_wav

    # Given a transcribe worker and a spoken recording
    deployment.start_worker("transcribe")
    wav = speech_wav(deployment.workdir / "fox.wav", "The quick brown fox jumps over the dog.")
    url, key = api
    client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    # When it is sent to /v1/audio/transcriptions as OpenAI's client sends it
    with wav.open("rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f)
    # Then the answer is the transcript
    assert "quick brown fox" in result.text.lower()
    with wav.open("rb") as f:
        srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    assert "00:00:00,000 -->" in str(srt)

    import openai

    # When it asks for verbose_json with word timestamps, Then the answer has the
    # fields OpenAI's client reads: the duration, numbered segments, and the words
    # with times inside the recording
    with wav.open("rb") as f:
        verbose = client.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert 1.0 < verbose.duration < 10.0
    assert "quick brown fox" in verbose.text.lower()
    assert [s.id for s in verbose.segments or []] == list(range(len(verbose.segments or [])))
    words = verbose.words or []
    assert "fox" in [w.word.lower().strip(".,") for w in words]
    assert all(0 <= w.start <= w.end <= verbose.duration for w in words)
    assert [w.start for w in words] == sorted(w.start for w in words)

    # When it asks for what stoker cannot honour (a prompt, word timestamps without
    # verbose_json, a temperature), Then it is refused naming the field, and the upload
    # was not kept
    for extra, field in (
        ({"prompt": "Names: Ada"}, "prompt"),
        ({"timestamp_granularities": ["word"]}, "timestamp_granularities"),
        ({"temperature": 0.5}, "temperature"),
    ):
        with wav.open("rb") as f, pytest.raises(openai.BadRequestError, match=f"body.{field}"):
            client.audio.transcriptions.create(model="whisper-1", file=f, **extra)  # type: ignore[call-overload]
    assert client.files.list().data == []


class _Recorder(_Receiver):
    received: list[tuple[dict[str, str], bytes]] = []
    fail_first = 0


def test_a_cancelled_job_is_retried_over_http_and_its_webhook_tells_the_new_end(
    api: tuple[str, str], deployment: Deployment
) -> None:
    url, key = api
    eve = make_key(deployment.settings(), "eve")
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = {"url": f"http://127.0.0.1:{server.server_port}/hook"}
    try:
        with httpx.Client(base_url=url, headers=auth(key), timeout=30) as http:
            # Given an echo job with a webhook (no worker here takes echo), cancelled,
            # its webhook delivered
            job = http.post(
                "/v1/jobs", json={"kind": "echo", "params": {"text": "hi"}, "webhook": hook}
            ).json()
            http.post(f"/v1/jobs/{job['id']}/cancel")
            wait_for(lambda: _Recorder.received, lambda r: len(r) == 1)

            # When another owner retries it: 404, as for a job they cannot see
            other = http.post(f"/v1/jobs/{job['id']}/retry", headers=auth(eve))
            assert other.status_code == 404
            # When its owner does, it is queued again, its webhook pending once more
            retried = http.post(f"/v1/jobs/{job['id']}/retry")
            assert retried.status_code == 202, retried.text
            view = retried.json()
            assert view["state"] == "queued" and view["error"] is None
            assert view["webhook"]["state"] == "pending" and view["webhook"]["attempts"] == []
            # And a second retry while it is queued is refused, saying why
            again = http.post(f"/v1/jobs/{job['id']}/retry")
            assert again.status_code == 400 and "is queued" in again.text

            # When it ends again (cancelled), that end is told too
            http.post(f"/v1/jobs/{job['id']}/cancel")
            wait_for(lambda: _Recorder.received, lambda r: len(r) == 2)
            wait_for(
                lambda: http.get(f"/v1/jobs/{job['id']}").json(),
                lambda j: j["webhook"]["state"] == "delivered",
            )

            # When it is retried from Python instead (as `stoker retry` does), not over
            # HTTP, and ends again, that end is told as well
            with Stoker(deployment.settings()) as stoker:
                stoker.retry(job["id"])
                stoker.cancel(job["id"])
            wait_for(lambda: _Recorder.received, lambda r: len(r) == 3)
            final = wait_for(
                lambda: http.get(f"/v1/jobs/{job['id']}").json(),
                lambda j: j["webhook"]["state"] == "delivered",
            )
    finally:
        server.shutdown()
        server.server_close()
    events = [json.loads(body) for _, body in _Recorder.received]
    assert [(e["type"], e["job_id"]) for e in events] == [("job.cancelled", job["id"])] * 3
    assert [a["status_code"] for a in final["webhook"]["attempts"]] == [200]
