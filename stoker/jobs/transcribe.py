"""transcribe: one recording → TXT, SRT, VTT and JSON transcripts (faster-whisper).

Plan (at submission, from the file's header only): the recording is stored once under
a content-addressed key and split into ``chunk_count`` chunks of about
``settings.transcribe_chunk_s`` seconds, cut at pauses (see cuts.py), so a 3-hour file
is many short tasks spread over workers. Each chunk decodes its own window, runs
Whisper (with its VAD filter, so silence costs little) and writes its segments with
absolute times. Assembly concatenates the chunks' segments and renders each format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from stoker.errors import InvalidInput, JobCancelled
from stoker.jobs import cuts, media, transcript
from stoker.jobs.base import (
    Artifact,
    AssembleContext,
    ChunkContext,
    ChunkPlan,
    PrepareContext,
    Prepared,
    SubmitNeed,
    parse_request,
)
from stoker.storage.keys import content_input_key, file_sha256

Format = Literal["txt", "srt", "vtt", "json"]
ALL_FORMATS: tuple[Format, ...] = ("txt", "srt", "vtt", "json")


class TranscribeRequest(BaseModel):
    """What a user may ask of ``transcribe`` for one file."""

    model_config = {"extra": "forbid"}

    path: str = Field(description="the recording, on the submitting machine")
    name: str | None = Field(default=None, description="how outputs and errors name it")
    model: str = Field(default="base", description="catalog name of a Whisper model")
    language: str = Field(default="auto", description="ISO code, or auto to detect")
    formats: list[Format] = Field(default_factory=lambda: list(ALL_FORMATS))
    word_timestamps: bool = False
    beam_size: int = Field(default=5, ge=1, le=10)
    batch_size: int = Field(default=8, ge=1, le=64, description="1 = sequential decoding")


def _check_language(language: str, model: str) -> str | None:
    """``language`` as faster-whisper takes it (None: detect), or InvalidInput.

    Where faster-whisper is not installed (a machine that only submits), the code is
    checked by the worker, which calls this again before transcribing.
    """
    if language == "auto":
        return None
    codes = _whisper_languages()
    if codes is not None and language not in codes:
        raise InvalidInput(
            f"unknown language {language!r}; use an ISO 639-1 code such as en, de, fr, "
            f"or auto to detect it."
        )
    if model.endswith(".en") and language != "en":
        raise InvalidInput(f"model {model!r} only knows English; use --model base for {language}.")
    return language


def _whisper_languages() -> frozenset[str] | None:
    """The language codes Whisper knows; None where faster-whisper is not installed."""
    try:
        from faster_whisper.tokenizer import _LANGUAGE_CODES
    except ImportError:
        return None
    return frozenset(_LANGUAGE_CODES)


def _decoder(model: Any, batch_size: int) -> Any:
    """faster-whisper's batched pipeline (speech cut by VAD, decoded ``batch_size`` at a
    time: 1.4x faster on 2 CPU cores in bench/transcribe.py), or the model itself."""
    if batch_size <= 1:
        return model
    from faster_whisper import BatchedInferencePipeline

    return BatchedInferencePipeline(model)


class TranscribeCapability:
    kind: str = "transcribe"
    backend: str | None = "whisper"
    chunk_ext: str = "json"
    chunk_content_type: str = "application/json"
    work_stage: str = "transcribe"
    engines: tuple[tuple[str, str], ...] = (("faster_whisper", "transcribe"), ("av", "transcribe"))
    submit_needs = (SubmitNeed("av", "av", "reading each recording's length"),)

    def prepare(self, request: dict[str, Any], ctx: PrepareContext) -> Prepared:
        req: TranscribeRequest = parse_request(request, TranscribeRequest)
        path = Path(req.path)
        name = req.name or path.name
        if not path.is_file():
            raise InvalidInput(f"{name} does not exist or is not a file.")
        spec = ctx.catalog.get(req.model, backend="whisper")
        language = _check_language(req.language, req.model)
        info = media.probe(path, name)
        digest = file_sha256(path)
        key = content_input_key(digest, path.suffix.lstrip(".").lower() or "bin")
        chunk_s = ctx.settings.transcribe_chunk_s
        options = {
            "language": language,
            "word_timestamps": req.word_timestamps,
            "beam_size": req.beam_size,
            "batch_size": req.batch_size,
        }
        params = {
            "name": name,
            "model": req.model,
            "duration_s": info.duration_s,
            "formats": list(dict.fromkeys(req.formats)),
            "chunk_s": chunk_s,
            "search_s": min(30.0, chunk_s / 4),
            "options": options,
        }
        chunks = [
            ChunkPlan(
                payload={"inputs": [key], "index": k},
                identity={
                    "model": spec.fingerprint,
                    "input": digest,
                    "k": k,
                    "chunk_s": chunk_s,
                    **options,
                },
            )
            for k in range(cuts.chunk_count(info.duration_s, chunk_s))
        ]
        return Prepared(params=params, model=req.model, chunks=chunks, uploads={key: path})

    def run_chunk(
        self, model: Any, params: dict[str, Any], payload: dict[str, Any], ctx: ChunkContext
    ) -> None:
        options = params["options"]
        # Checked at submission too, unless faster-whisper is not installed there.
        _check_language(options["language"] or "auto", params["model"])
        path = ctx.inputs[payload["inputs"][0]]
        start, end = cuts.boundaries(
            path,
            payload["index"],
            params["duration_s"],
            params["chunk_s"],
            params["search_s"],
            params["name"],
        )
        audio = media.decode(path, start, end, params["name"])
        stop = start + len(audio) / media.SAMPLE_RATE
        pieces, info = _decoder(model, options["batch_size"]).transcribe(
            audio,
            language=options["language"],
            beam_size=options["beam_size"],
            word_timestamps=options["word_timestamps"],
            vad_filter=True,
            **({"batch_size": options["batch_size"]} if options["batch_size"] > 1 else {}),
        )
        segments = []
        for piece in pieces:  # a generator: the work happens while iterating
            if ctx.should_stop():
                raise JobCancelled("the job was cancelled while this chunk was transcribed")
            segments.extend(transcript.segments_from_faster_whisper([piece], offset_s=start))
        part = transcript.Transcript(
            segments=tuple(segments),
            language=info.language,
            language_probability=info.language_probability,
            duration_s=stop - start,
            model=params["model"],
            options=options,
        )
        chunk = {"start": start, "end": stop, "transcript": transcript.to_json_dict(part)}
        ctx.out.write_text(json.dumps(chunk), encoding="utf-8")

    def assemble(self, params: dict[str, Any], ctx: AssembleContext) -> list[Artifact]:
        chunk_files, workdir = ctx.chunk_files, ctx.workdir
        parts = [
            transcript.from_json_dict(json.loads(f.read_text(encoding="utf-8"))["transcript"])
            for f in chunk_files
        ]
        spoken = [p for p in parts if p.segments] or parts
        whole = transcript.Transcript(
            segments=tuple(s for p in parts for s in p.segments),
            language=spoken[0].language,
            language_probability=spoken[0].language_probability,
            duration_s=params["duration_s"],
            model=params["model"],
            options=params["options"],
        )
        meta = {
            "duration_s": round(params["duration_s"], 3),
            "language": whole.language,
            "segments": len(whole.segments),
        }
        stem = Path(params["name"]).stem or "transcript"
        artifacts = []
        for fmt in params["formats"]:
            ext, content_type = transcript.FORMATS[fmt]
            out = workdir / f"{stem}.{ext}"
            out.write_text(transcript.render(whole, fmt), encoding="utf-8")
            artifacts.append(Artifact(out.name, out, content_type, meta))
        return artifacts
