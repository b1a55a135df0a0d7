"""audiobook: an EPUB, Markdown or text book → one audio file per chapter and an M4B.

Plan (at submission): the book is read into chapters with their real titles
(books.py); each chapter is its title as the first sentence, then its sentences,
packed into chunks as for ``speak``. Chunks are content-addressed like speak's, so a
rerun after a crash, or a resubmission with the same voice and options, synthesizes
only what is missing.

Each chapter is a chunk group (jobs/base.ChunkGroups): the worker that finishes a
chapter's last chunk encodes that chapter right away into its per-chapter files
(mp3, flac, wav or ogg) and its share of the M4B (AAC in an ``.m4a``), stored
content-addressed. Assembly then only joins the chapters' AAC into one ``.m4b``
without re-encoding, with chapter markers carrying the real titles, the book's
title, author and cover.

Verification (``verify``: first-chapter by default, all, none): a checked chunk is
transcribed back by a Whisper model on the same worker (verify.py); one that does not
match its text is synthesized once more. The results go in ``verification.json``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from stoker.errors import InvalidInput, MissingDependency, ModelLoadError, UnknownModel
from stoker.jobs import audio, books, text, verify
from stoker.jobs.base import (
    Artifact,
    AssembleContext,
    ChunkContext,
    ChunkPlan,
    GroupContext,
    GroupOutput,
    PrepareContext,
    Prepared,
    SubmitNeed,
    parse_request,
)
from stoker.jobs.speak import speaker_id, speech_chunks, synthesize_to_wav
from stoker.storage.keys import content_digest, content_input_key

log = logging.getLogger(__name__)

BookFormat = Literal["m4b", "mp3", "flac", "wav", "ogg"]
Verify = Literal["first-chapter", "all", "none"]
DEFAULT_FORMATS: tuple[BookFormat, ...] = ("m4b", "mp3")
#: Part of every chapter output's identity: bump it when what they hold changes, so
#: that outputs made by an older stoker are not reused.
CHAPTER_OUTPUTS_VERSION = 1


class AudiobookRequest(BaseModel):
    model_config = {"extra": "forbid"}

    path: str = Field(description="the book (.epub, .md, .txt) on the submitting machine")
    name: str | None = None
    voice: str | None = None
    formats: list[BookFormat] = Field(
        default_factory=lambda: list(DEFAULT_FORMATS),
        description="m4b: the whole book; others: per chapter",
    )
    chapters_by: str = Field(default="auto", description="auto, heading, blank-lines:N, none")
    skip_front_matter: bool = True
    speaker: int | str | None = None
    length_scale: float = Field(default=1.0, gt=0.1, le=5.0)
    sentence_silence_s: float = Field(default=0.3, ge=0.0, le=5.0)
    chapter_silence_s: float = Field(default=1.5, ge=0.0, le=10.0)
    # Transcribe chunks back with Whisper and re-synthesize a mismatch once.
    verify: Verify = Field(default="first-chapter", description="first-chapter, all or none")
    verify_model: str | None = Field(default=None, description="Whisper model; by language")


def _cover(book: books.Book, params: dict[str, Any]) -> dict[str, Path | bytes]:
    if book.cover is None:
        return {}
    ext = "png" if book.cover_type == "image/png" else "jpg"
    key = content_input_key(content_digest(book.cover), ext)
    params.update(cover_key=key, cover_type=book.cover_type, assemble_inputs=[key])
    return {key: book.cover}


def _verification(
    req: AudiobookRequest, voice: str, language: str | None, ctx: PrepareContext
) -> dict[str, Any]:
    """``verify_model``/``verify_language`` params, or {} when not verifying.

    Whether Whisper can check the audio is for the workers that will run the job to
    say, not the submitting machine: where live workers take audiobooks of ``voice``
    (a Redis fleet), what they have decides (their model cards, which name the Whisper
    models they can load); elsewhere this machine's Whisper does (`stoker run` runs
    the job here). The default (first chapter) is skipped quietly unless every such
    worker can verify; asking for it explicitly fails when none can.
    """
    if req.verify == "none":
        return {}
    lang = (language or "en").split("_")[0].lower()
    name = req.verify_model or ("tiny.en" if lang == "en" else "base")
    by_default = req.verify_model is None and req.verify == "first-chapter"
    takers = ctx.catalog.fleet_takers("audiobook", voice)
    plan = {"verify_model": name, "verify_language": lang}
    if takers:
        able = [name in held for held in takers]
        if all(able) or (any(able) and not by_default):
            return plan
        problem = (
            f"{'only some' if any(able) else 'none'} of the {len(takers)} live worker(s) "
            f"that run audiobooks with voice {voice!r} can load it; install "
            f"stoker[transcribe] and the model on them"
        )
    elif importlib.util.find_spec("faster_whisper") and name in ctx.catalog.names("whisper"):
        return plan
    else:
        problem = "it is not installed here; install stoker[transcribe]"
    if by_default:
        log.info("first chapter not verified: %s", problem.partition(";")[0])
        return {}
    raise InvalidInput(
        f"verify needs the Whisper model {name!r}, but {problem}, pick another with "
        f"verify_model, or set verify to none."
    )


def _verified(chunk: ChunkPlan, checking: dict[str, Any]) -> ChunkPlan:
    """``chunk``, marked to be checked; its identity changes with the checking model."""
    return ChunkPlan(
        payload={**chunk.payload, "verify": True},
        identity={**chunk.identity, "verified_by": checking["verify_model"]},
    )


def _checked(
    voice: Any, whisper: Any, params: dict[str, Any], chunk_text: str, ctx: ChunkContext
) -> dict[str, Any]:
    """Check the chunk in ``ctx.out``; re-synthesize it once if Whisper disagrees."""
    first = verify.check(whisper, ctx.out, chunk_text, params["verify_language"])
    notes: dict[str, Any] = {
        "ratio": first.ratio,
        "gap": first.gap,
        "resynthesized": False,
        "ok": first.ok,
    }
    if first.ok:
        return notes
    log.warning("chunk heard as %r (match %.2f); synthesizing it again", first.heard, first.ratio)
    synthesize_to_wav(voice, chunk_text, params, ctx.out, ctx.should_stop)
    second = verify.check(whisper, ctx.out, chunk_text, params["verify_language"])
    notes.update(first_ratio=first.ratio, ratio=second.ratio, gap=second.gap)
    notes.update(resynthesized=True, ok=second.ok)
    if not second.ok:
        notes.update(expected=chunk_text[:300], heard=second.heard[:300])
    return notes


class AudiobookCapability:
    kind: str = "audiobook"
    backend: str | None = "piper"
    chunk_ext: str = "wav"
    chunk_content_type: str = "audio/wav"
    work_stage: str = "synthesize"
    chunk_notes: bool = True  # verification results, per chunk
    borrows: tuple[tuple[str, str], ...] = (("whisper", "faster_whisper"),)  # to verify
    submit_needs = (  # a plain-text book needs none of them
        SubmitNeed("ebooklib", "ebooklib", "reading EPUB books", always=False),
        SubmitNeed("bs4", "beautifulsoup4", "reading EPUB books", always=False),
        SubmitNeed("markdown_it", "markdown-it-py", "reading Markdown books", always=False),
    )
    engines: tuple[tuple[str, str], ...] = (
        ("piper", "speak"),
        ("soundfile", "speak"),
        ("ebooklib", "audiobook"),
        ("av", "audiobook"),
    )

    def prepare(self, request: dict[str, Any], ctx: PrepareContext) -> Prepared:
        req: AudiobookRequest = parse_request(request, AudiobookRequest)
        path = Path(req.path)
        name = req.name or path.name
        if not path.is_file():
            raise InvalidInput(f"{name} does not exist or is not a file.")
        voice = req.voice or ctx.settings.default_voice
        spec = ctx.catalog.get(voice, backend="piper")
        info = ctx.catalog.voice_info(voice)
        book = books.read_book(
            path, chapters_by=req.chapters_by, skip_front_matter=req.skip_front_matter, name=name
        )
        sound = {
            "speaker_id": speaker_id(req.speaker, voice, info),
            "length_scale": req.length_scale,
            "sentence_silence_s": req.sentence_silence_s,
        }
        chunks, chapters = self._plan(book, spec.fingerprint, sound, ctx.settings.speak_chunk_chars)
        checking = _verification(req, voice, info.language, ctx)
        if checking:
            last = chapters[0]["count"] if req.verify == "first-chapter" else len(chunks)
            chunks = [_verified(c, checking) if i < last else c for i, c in enumerate(chunks)]
            # The checked chunks are the first `last`: assembly reads only their notes.
            checking["verified_chunks"] = last
        params = {
            "name": name,
            "title": book.title,
            "author": book.author,
            "voice": voice,
            "formats": list(dict.fromkeys(req.formats)),
            "sample_rate": info.sample_rate,
            "chapter_silence_s": req.chapter_silence_s,
            "chapters": chapters,
            **sound,
            **checking,
        }
        return Prepared(params=params, model=voice, chunks=chunks, uploads=_cover(book, params))

    @staticmethod
    def _plan(
        book: books.Book, fingerprint: str, sound: dict[str, Any], max_chars: int
    ) -> tuple[list[ChunkPlan], list[dict[str, Any]]]:
        chunks: list[ChunkPlan] = []
        chapters = []
        for chapter in book.chapters:
            heading = chapter.title if chapter.title[-1:] in ".!?" else f"{chapter.title}."
            pieces = text.pack_chunks([heading, *text.split_sentences(chapter.text)], max_chars)
            chapters.append(
                {
                    "title": chapter.title,
                    "first": len(chunks),
                    "count": len(pieces),
                    "words": sum(len(p.split()) for p in pieces),  # for progress estimates
                }
            )
            chunks.extend(speech_chunks(pieces, fingerprint, sound))
        return chunks, chapters

    def run_chunk(
        self, model: Any, params: dict[str, Any], payload: dict[str, Any], ctx: ChunkContext
    ) -> None:
        synthesize_to_wav(model, payload["text"], params, ctx.out, ctx.should_stop)
        if payload.get("verify") and ctx.use_model is not None:
            with contextlib.ExitStack() as stack:
                name = params["verify_model"]
                try:
                    whisper = stack.enter_context(ctx.use_model(name, "whisper"))
                except (UnknownModel, ModelLoadError, MissingDependency) as exc:
                    # Planned from the fleet's cards at submission; this worker differs.
                    raise ModelLoadError(
                        f"the book's speech is to be checked with Whisper {name!r}, which "
                        f"this worker cannot load ({exc}); install stoker[transcribe] and "
                        f"that model on every worker that takes audiobooks, or submit the "
                        f"book with verify none."
                    ) from exc
                ctx.notes.update(_checked(model, whisper, params, payload["text"], ctx))

    def noted_chunks(self, params: dict[str, Any], count: int) -> range:
        """The verified chunks, the only ones with notes (jobs/base.NotedChunks): the
        first ``params["verified_chunks"]``, or any of a job planned before that was
        recorded; none when not verifying."""
        if not params.get("verify_model"):
            return range(0)
        return range(min(params.get("verified_chunks", count), count))

    # --- chapters as chunk groups (jobs/base.ChunkGroups) --------------------------

    def chunk_groups(self, params: dict[str, Any]) -> list[range]:
        return [range(c["first"], c["first"] + c["count"]) for c in params["chapters"]]

    def group_outputs(self, params: dict[str, Any], group: int) -> list[GroupOutput]:
        """A chapter's outputs: ``info`` (its length in samples), one file per
        per-chapter format and, for an M4B, ``aac``: the chapter's AAC, led by the
        pause between chapters (none before the first). Assembly reads ``info`` and
        ``aac``; the per-chapter files are only published (copied in storage)."""
        sound = {
            "v": CHAPTER_OUTPUTS_VERSION,
            "sample_rate": params["sample_rate"],
            "gap_s": params["sentence_silence_s"],
        }
        outputs = [GroupOutput("info", "json", "application/json", sound)]
        for fmt in params["formats"]:
            if fmt == "m4b":
                lead_s = params["chapter_silence_s"] if group else 0.0
                aac = {**sound, "bit_rate": audio.AAC_BIT_RATE, "lead_s": lead_s}
                outputs.append(GroupOutput("aac", "m4a", "audio/mp4", aac))
            else:
                spec = audio.FORMATS[fmt]
                outputs.append(GroupOutput(fmt, spec.ext, spec.content_type, sound, fetch=False))
        return outputs

    def finish_group(
        self, params: dict[str, Any], group: int, wanted: list[GroupOutput], ctx: GroupContext
    ) -> dict[str, Path]:
        return {out.name: _chapter_output(out, params, ctx) for out in wanted}

    def assemble(self, params: dict[str, Any], ctx: AssembleContext) -> list[Artifact]:
        artifacts = [
            a for fmt in params["formats"] if fmt != "m4b" for a in _chapter_files(ctx, fmt, params)
        ]
        if "m4b" in params["formats"]:
            artifacts.insert(0, _book_file(ctx.group_files, params, ctx))
        if params.get("verify_model"):
            artifacts.append(_verification_report(params, ctx))
        return artifacts


def _chapter_output(out: GroupOutput, params: dict[str, Any], ctx: GroupContext) -> Path:
    """Write one of a chapter's outputs (see ``group_outputs``) from its chunk WAVs."""
    rate, gap_s, parts = params["sample_rate"], params["sentence_silence_s"], ctx.chunk_files
    path = ctx.workdir / f"{out.name}.{out.ext}"
    if out.name == "info":
        path.write_text(json.dumps({"frames": audio.frames_of(parts, rate, gap_s)}))
    elif out.name == "aac":
        audio.encode_aac(parts, path, rate, gap_s, out.identity["lead_s"])
    else:
        audio.concatenate(parts, path, out.name, rate, gap_s)
    return path


def _verification_report(params: dict[str, Any], ctx: AssembleContext) -> Artifact:
    """``verification.json``: which chunks were checked, re-synthesized, still off."""
    titles = {
        i: c["title"]
        for c in params["chapters"]
        for i in range(c["first"], c["first"] + c["count"])
    }
    checked = [(i, n) for i, n in enumerate(ctx.chunk_notes) if "ratio" in n]
    report = {
        "model": params["verify_model"],
        "min_ratio": verify.MIN_RATIO,
        "max_gap_words": verify.MAX_GAP_WORDS,
        "checked": len(checked),
        "resynthesized": sum(1 for _, n in checked if n["resynthesized"]),
        "mismatched": [
            {"chunk": i, "chapter": titles.get(i), **n} for i, n in checked if not n["ok"]
        ],
        "chunks": [{"chunk": i, "chapter": titles.get(i), **n} for i, n in checked],
    }
    out = ctx.workdir / "verification.json"
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    meta = {k: report[k] for k in ("checked", "resynthesized")}
    return Artifact(
        out.name, out, "application/json", meta | {"mismatched": len(report["mismatched"])}
    )


def _safe(title: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in " -_" else "_" for c in title).strip()
    return cleaned[:60] or "chapter"


def _chapter_files(ctx: AssembleContext, fmt: str, params: dict[str, Any]) -> list[Artifact]:
    """The chapters' files in ``fmt``, as they were encoded and stored when each chapter
    finished: published from there, not downloaded."""
    spec = audio.FORMATS[fmt]
    artifacts = []
    chapters = zip(params["chapters"], ctx.group_files, ctx.group_keys, strict=True)
    for n, (chapter, files, keys) in enumerate(chapters, 1):
        frames = json.loads(files["info"].read_text())["frames"]
        name = f"{n:03d} {_safe(chapter['title'])}.{spec.ext}"
        meta = {
            "chapter": n,
            "title": chapter["title"],
            "duration_s": round(frames / params["sample_rate"], 3),
        }
        artifacts.append(Artifact(name, None, spec.content_type, meta, source_key=keys[fmt]))
    return artifacts


def _book_file(
    chapters: list[dict[str, Path]], params: dict[str, Any], ctx: AssembleContext
) -> Artifact:
    """The M4B: the chapters' AAC joined, with markers, tags and the cover."""
    out = ctx.workdir / f"{_safe(params['title'])}.m4b"
    metadata = {"title": params["title"], "album": params["title"], "genre": "Audiobook"}
    if params.get("author"):
        metadata["artist"] = params["author"]
    lead = round(params["chapter_silence_s"] * params["sample_rate"])
    parts = [
        audio.BookChapter(chapter["title"], files["aac"], lead if n else 0)
        for n, (chapter, files) in enumerate(zip(params["chapters"], chapters, strict=True))
    ]
    starts = audio.join_m4b(parts, out, metadata)
    if params.get("cover_key") in ctx.inputs:
        audio.add_cover(out, ctx.inputs[params["cover_key"]].read_bytes(), params["cover_type"])
    meta = {
        "duration_s": round(audio.duration_s(out), 3),
        "chapters": [
            {"title": c.title, "start_s": round(s, 3)} for c, s in zip(parts, starts, strict=True)
        ],
    }
    return Artifact(out.name, out, "audio/mp4", meta)
