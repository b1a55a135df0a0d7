"""An audiobook's chapters are encoded as they finish: the real executor, job store
and storage on a book whose chunk WAVs are tones (no voice needed), chunks finished
in a shuffled order as several workers would."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from stoker.config import load_settings
from stoker.jobs import audio
from stoker.jobs.audiobook import AudiobookCapability
from stoker.queues.records import ChunkRef, JobRecord, JobState, new_record
from stoker.queues.stores import open_job_store
from stoker.storage import open_storage
from stoker.storage.keys import chunk_key, content_digest
from stoker.workers.assembly import notes_key
from stoker.workers.catalog import ModelCatalog
from stoker.workers.execute import ChunkExecutor
from stoker.workers.groups import group_key
from stoker.workers.manager import ModelManager
from stoker.workers.process import build_executor
from tests.watched_storage import WatchedStorage

pytestmark = pytest.mark.integration

RATE = 22_050
#: Chapters as their chunks' lengths in seconds.
PLAN = [[0.6, 0.4, 0.5], [0.8], [0.3, 0.7], [0.5, 0.5]]
CAP = AudiobookCapability()


@pytest.fixture()
def executor(tmp_path: Path) -> ChunkExecutor:
    """A worker's executor on the embedded default: SQLite records, local storage."""
    return build_executor(load_settings(data_dir=tmp_path / "data"), "cpu")


def tone_book(ex: ChunkExecutor, folder: Path, formats: list[str], **extra: Any) -> JobRecord:
    """A submitted audiobook job whose chunk outputs (one tone per chapter) are stored;
    ``extra`` goes in its params."""
    chapters: list[dict[str, Any]] = []
    chunks: list[ChunkRef] = []
    for c, lengths in enumerate(PLAN):
        title = f"Part {c + 1}: the {['first', 'second', 'third', 'fourth'][c]}"
        chapters.append({"title": title, "first": len(chunks), "count": len(lengths), "words": 9})
        for i, seconds in enumerate(lengths):
            t = np.arange(round(seconds * RATE)) / RATE
            path = folder / f"{c}-{i}.wav"
            tone = (np.sin(2 * np.pi * (300 + 120 * c) * t) * 8000).astype(np.int16)
            sf.write(path, tone, RATE, subtype="PCM_16")
            key = chunk_key("audiobook", content_digest({"chapter": c, "chunk": i}), "wav")
            ex.storage.put_file(key, path, "audio/wav")
            chunks.append(ChunkRef(index=len(chunks), key=key))
    params = {
        "name": "tones.epub",
        "title": "Tones",
        "author": "A. Tester",
        "voice": "en_US-joe-medium",
        "formats": formats,
        "sample_rate": RATE,
        "sentence_silence_s": 0.3,
        "chapter_silence_s": 1.0,
        "chapters": chapters,
        **extra,
    }
    record = new_record(kind="audiobook", params=params, chunks=chunks)
    ex.store.create(record)
    return record


def chapter_keys(record: JobRecord, chapter: int) -> list[str]:
    """Where chapter ``chapter``'s outputs are stored."""
    indexes = CAP.chunk_groups(record.params)[chapter]
    chunk_keys = [record.chunks[i].key for i in indexes]
    return [
        group_key("audiobook", chunk_keys, out) for out in CAP.group_outputs(record.params, chapter)
    ]


def chapter_of(record: JobRecord, index: int) -> int:
    return next(c for c, g in enumerate(CAP.chunk_groups(record.params)) if index in g)


def shuffled_indexes(record: JobRecord, seed: int) -> list[int]:
    order = list(range(len(record.chunks)))
    random.Random(seed).shuffle(order)
    return order


def made_groups(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if " made in " in r.getMessage()]


def test_each_chapter_is_encoded_by_the_chunk_that_completes_it(
    executor: ChunkExecutor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a 4-chapter book whose chunks finish in a shuffled order
    record = tone_book(executor, tmp_path, ["m4b", "mp3", "wav"])
    order = shuffled_indexes(record, seed=3)
    caplog.set_level(logging.INFO, logger="stoker.workers.groups")
    # When every chunk but the book's last one is done
    for index in order[:-1]:
        complete_before = {
            c
            for c in range(len(PLAN))
            if all(executor.storage.exists(k) for k in chapter_keys(record, c))
        }
        executor.run_chunk(record.id, index, {})
        chapter = chapter_of(record, index)
        group = CAP.chunk_groups(record.params)[chapter]
        finished = executor.store.chunks_all_done(record.id, group)
        # Then a chapter's outputs appear exactly when its last chunk is recorded
        for c in range(len(PLAN)):
            stored = all(executor.storage.exists(k) for k in chapter_keys(record, c))
            assert stored == (c in complete_before or (c == chapter and finished)), (index, c)
    last_chapter = chapter_of(record, order[-1])
    assert len(made_groups(caplog)) == len(PLAN) - 1
    assert executor.store.state(record.id) is JobState.RUNNING
    # When the last chunk is done, the job succeeds, encoding only the last chapter
    executor.run_chunk(record.id, order[-1], {})
    done = executor.store.get(record.id)
    assert done.state is JobState.SUCCEEDED
    assert len(made_groups(caplog)) == len(PLAN)
    assert f"group {last_chapter + 1}/{len(PLAN)}:" in made_groups(caplog)[-1]
    # And the outputs are the M4B, then each chapter's MP3s and WAVs, in order
    titles = [c["title"] for c in record.params["chapters"]]
    safe = [t.replace(":", "_") for t in titles]
    names = [o.name for o in done.outputs]
    assert names == [
        "Tones.m4b",
        *[f"{n:03d} {t}.mp3" for n, t in enumerate(safe, 1)],
        *[f"{n:03d} {t}.wav" for n, t in enumerate(safe, 1)],
        "manifest.json",
    ]
    assert_book_matches_chapters(executor, done, tmp_path / "out")


def assert_book_matches_chapters(ex: ChunkExecutor, done: JobRecord, folder: Path) -> None:
    """Chapter titles, start times and durations as planned, every chapter once, in order."""
    import av
    from mutagen.mp4 import MP4

    m4b = ex.storage.download(done.outputs[0].key, folder / "book.m4b")
    tagged = MP4(str(m4b))
    assert tagged.chapters is not None
    titles = [c["title"] for c in done.params["chapters"]]
    assert [c.title for c in tagged.chapters] == titles
    with av.open(str(m4b)) as container:
        x = np.concatenate([f.to_ndarray().ravel() for f in container.decode(audio=0)]) * 32768
    for n, chapter in enumerate(tagged.chapters):
        at = round(chapter.start * RATE)
        # Each chapter's tone starts at its marker, after the pause between chapters
        assert np.abs(x[at + 20 : at + 1000]).max() > 6000, chapter.title
        if n:
            assert np.abs(x[at - 1000 : at - 20]).max() < 400, chapter.title
    # And each chapter file lasts its chunks plus the sentence gaps between them
    manifest = json.loads(ex.storage.get_bytes(done.outputs[-1].key))
    frames = [sum(round(s * RATE) for s in p) + round(0.3 * RATE) * (len(p) - 1) for p in PLAN]
    for entry in manifest["outputs"]:
        if "chapter" in entry["meta"]:
            n = entry["meta"]["chapter"] - 1
            assert entry["meta"]["title"] == titles[n]
            assert entry["meta"]["duration_s"] == round(frames[n] / RATE, 3)
            if entry["name"].endswith(".wav"):  # exactly
                path = ex.storage.download(entry["key"], folder / entry["name"])
                assert sf.info(str(path)).frames == frames[n]


def test_a_rerun_reuses_the_chapter_outputs(
    executor: ChunkExecutor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a book that was made once
    first = tone_book(executor, tmp_path, ["m4b", "mp3"])
    for index in shuffled_indexes(first, seed=1):
        executor.run_chunk(first.id, index, {})
    done_first = executor.store.get(first.id)
    # When the same book is submitted again (same chunks, same options)
    caplog.clear()
    caplog.set_level(logging.INFO, logger="stoker.workers.groups")
    again = tone_book(executor, tmp_path, ["m4b", "mp3"])
    for index in shuffled_indexes(again, seed=2):
        executor.run_chunk(again.id, index, {})
    done_again = executor.store.get(again.id)
    # Then no chapter is encoded again, and the outputs are the same bytes
    assert done_again.state is JobState.SUCCEEDED
    assert made_groups(caplog) == []
    for a, b in zip(done_first.outputs[:-1], done_again.outputs[:-1], strict=True):
        assert a.name == b.name
        assert executor.storage.get_bytes(a.key) == executor.storage.get_bytes(b.key), a.name


def test_assembly_makes_the_chapter_outputs_a_crash_lost(
    executor: ChunkExecutor, tmp_path: Path
) -> None:
    # Given a book whose chapters were encoded as they finished, but chapter 2's
    # outputs were lost (a worker died between finishing the chapter and storing them)
    record = tone_book(executor, tmp_path, ["m4b", "mp3"])
    order = [i for i in range(len(record.chunks)) if i != 4] + [4]  # chunk 4: chapter 3
    for index in order[:-1]:
        executor.run_chunk(record.id, index, {})
    for key in chapter_keys(record, 1):
        executor.storage.delete(key)
    # When the last chunk is done
    executor.run_chunk(record.id, order[-1], {})
    # Then assembly encodes what was missing and the book is whole
    done = executor.store.get(record.id)
    assert done.state is JobState.SUCCEEDED
    assert all(executor.storage.exists(k) for k in chapter_keys(record, 1))
    assert_book_matches_chapters(executor, done, tmp_path / "out")


def test_a_failed_chapter_encoding_is_left_to_assembly(
    executor: ChunkExecutor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given chapter encoding that fails while the chunks run (a full disk, say)
    record = tone_book(executor, tmp_path, ["m4b", "mp3"])
    order = shuffled_indexes(record, seed=5)
    original = AudiobookCapability.finish_group

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("No space left on device")

    monkeypatch.setattr(AudiobookCapability, "finish_group", broken)
    caplog.set_level(logging.WARNING, logger="stoker.workers.groups")
    # When all chunks but the last are done
    for index in order[:-1]:
        executor.run_chunk(record.id, index, {})
    # Then the job goes on; the failures are logged
    assert executor.store.state(record.id) is JobState.RUNNING
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(PLAN) - 1
    assert "assembly will make them" in warnings[0].getMessage()
    # And once encoding works again, assembly makes every chapter
    monkeypatch.setattr(AudiobookCapability, "finish_group", original)
    executor.run_chunk(record.id, order[-1], {})
    done = executor.store.get(record.id)
    assert done.state is JobState.SUCCEEDED
    assert_book_matches_chapters(executor, done, tmp_path / "out")


# --- on S3: what assembly reads and writes -----------------------------------------


@pytest.fixture()
def s3_executor(
    clean_redis: str, s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> Iterator[tuple[ChunkExecutor, WatchedStorage]]:
    """A worker's executor in production shape (Redis records, S3 outputs), whose
    storage calls are counted."""
    settings = load_settings(
        data_dir=tmp_path / "data",
        broker_url=clean_redis,
        storage_url=f"s3://{s3_bucket}/stoker",
        s3_endpoint_url=s3_endpoint,
    )
    storage = WatchedStorage(open_storage(settings))
    store = open_job_store(settings)
    yield (
        ChunkExecutor(
            settings=settings,
            store=store,
            storage=storage,  # type: ignore[arg-type]
            catalog=ModelCatalog(settings),
            manager=ModelManager(settings),
            device="cpu",
        ),
        storage,
    )
    store.close()
    storage.inner.close()  # type: ignore[attr-defined]


@pytest.mark.timeout(60)
def test_assembly_publishes_chapter_files_without_downloading_them(
    s3_executor: tuple[ChunkExecutor, WatchedStorage], tmp_path: Path
) -> None:
    # Given a book on S3 whose chunks are all done but the last (chapters encoded as
    # they finished), with per-chapter MP3s and WAVs besides the M4B
    executor, storage = s3_executor
    record = tone_book(executor, tmp_path, ["m4b", "mp3", "wav"])
    order = shuffled_indexes(record, seed=4)
    for index in order[:-1]:
        executor.run_chunk(record.id, index, {})
    # (each chapter finished so far was made from its chunks, those its last chunk's
    # worker had not just made downloaded side by side, and its outputs stored so)
    io = lambda call: storage.thread_of[call].startswith("stoker-io")  # noqa: E731
    chunk_at = {c.key: c.index for c in record.chunks}
    early: dict[int, list[tuple[str, str]]] = {}
    for key in storage.keys("download"):
        if key in chunk_at:
            early.setdefault(chapter_of(record, chunk_at[key]), []).append(("download", key))
    several = [calls for calls in early.values() if len(calls) > 1]  # one runs in place
    assert several and all(io(call) for calls in several for call in calls)
    stored = [("put_file", k) for k in storage.keys("put_file") if "audiobook-groups" in k]
    assert stored and all(io(call) for call in stored)
    # When the last chunk is done and the book assembled
    storage.calls.clear()
    executor.run_chunk(record.id, order[-1], {})
    done = executor.store.get(record.id)
    assert done.state is JobState.SUCCEEDED, done.error
    # Then of the chapters' outputs only the lengths and the AAC were downloaded, all
    # the chapters' side by side
    keys = [chapter_keys(record, c) for c in range(len(PLAN))]  # info, aac, mp3, wav
    downloaded = {k for k in storage.keys("download") if k.startswith("chunks/audiobook-groups/")}
    assert downloaded == {k for info, aac, _, _ in keys for k in (info, aac)}
    assert all(io(("download", k)) for k in downloaded)
    # And each chapter file was copied from where its chapter stored it, not uploaded
    chapter_outputs = [o for o in done.outputs if o.name.endswith((".mp3", ".wav"))]
    assert [k for k in storage.keys("put_file") if k.startswith(f"jobs/{record.id}/")] == [
        done.outputs[0].key  # the M4B
    ]
    assert sorted(storage.keys("copy")) == sorted(k for _, _, mp3, wav in keys for k in (mp3, wav))
    assert len(chapter_outputs) == 2 * len(PLAN)
    for out in chapter_outputs:
        fmt = out.name.rsplit(".", 1)[1]
        source = keys[int(out.name[:3]) - 1][2 if fmt == "mp3" else 3]
        assert storage.inner.get_bytes(out.key) == storage.inner.get_bytes(source), out.name
        assert out.size_bytes == storage.inner.stat(source).size_bytes
        assert out.content_type == audio.FORMATS[fmt].content_type
        assert storage.inner.stat(out.key).content_type == out.content_type
    assert_book_matches_chapters(executor, done, tmp_path / "out")


PLAN_FIRST = len(PLAN[0])  # chunks in the first chapter


def noted_book(executor: ChunkExecutor, folder: Path, **extra: Any) -> JobRecord:
    """A book verified with ``extra`` params, whose first chapter's chunks have notes
    (the second one a mismatch) stored beside them."""
    record = tone_book(
        executor, folder, ["mp3"], verify_model="tiny.en", verify_language="en", **extra
    )
    for i in range(PLAN_FIRST):
        notes = {"ratio": 0.4 if i == 1 else 0.97, "gap": 0, "resynthesized": i == 1}
        executor.storage.put_json(notes_key(record.chunks[i].key), notes | {"ok": i != 1})
    return record


@pytest.mark.timeout(60)
@pytest.mark.parametrize("recorded", [True, False], ids=["verified-recorded", "older-job"])
def test_assembly_reads_the_notes_of_verified_chunks_only(
    s3_executor: tuple[ChunkExecutor, WatchedStorage], tmp_path: Path, recorded: bool
) -> None:
    # Given a book whose first chapter was verified, planned with the verified chunks
    # recorded in its params, or before they were (then any chunk may have notes)
    executor, storage = s3_executor
    extra = {"verified_chunks": PLAN_FIRST} if recorded else {}
    record = noted_book(executor, tmp_path, **extra)
    # When every chunk is done and the book assembled
    for index in range(len(record.chunks)):
        if index == len(record.chunks) - 1:
            storage.calls.clear()
        executor.run_chunk(record.id, index, {})
    done = executor.store.get(record.id)
    assert done.state is JobState.SUCCEEDED, done.error
    # Then the notes were read with one GET each, of the verified chunks only (of
    # every chunk, on a few threads, for the older job), and never asked for first
    notes_keys = [notes_key(c.key) for c in record.chunks]
    wanted = notes_keys[:PLAN_FIRST] if recorded else notes_keys
    assert sorted(k for k in storage.keys("get_bytes") if k.endswith(".notes.json")) == sorted(
        wanted
    )
    assert [k for k in storage.keys("exists") if k.endswith(".notes.json")] == []
    # And the report has every verified chunk and its mismatch, as before
    report_ref = next(o for o in done.outputs if o.name == "verification.json")
    report = json.loads(storage.inner.get_bytes(report_ref.key))
    assert report["checked"] == PLAN_FIRST and report["resynthesized"] == 1
    assert [m["chunk"] for m in report["mismatched"]] == [1]
    assert {c["chapter"] for c in report["chunks"]} == {record.params["chapters"][0]["title"]}
