"""speak: text → speech with a Piper voice.

Plan: the text is split at sentence boundaries into chunks of at most
``settings.speak_chunk_chars`` characters. Each chunk is synthesized to a 16-bit mono
WAV (sentences separated by the voice's sentence silence); assembly streams the chunk
WAVs, in order and with the same silence between them, into WAV, FLAC, OGG or MP3.
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from stoker.errors import InvalidInput, JobCancelled, MissingDependency
from stoker.jobs import audio, text
from stoker.jobs.base import (
    NAME_PATTERN,
    Artifact,
    AssembleContext,
    ChunkContext,
    ChunkPlan,
    PrepareContext,
    Prepared,
    StopCheck,
    parse_request,
)
from stoker.workers.catalog import VoiceInfo


class SpeakRequest(BaseModel):
    """What a user may ask of ``speak``."""

    model_config = {"extra": "forbid"}

    text: str
    voice: str | None = Field(default=None, description="catalog name; default_voice if unset")
    format: Literal["wav", "flac", "mp3", "ogg"] = "wav"
    speaker: int | str | None = Field(default=None, description="id or name, multi-speaker voices")
    length_scale: float = Field(default=1.0, gt=0.1, le=5.0, description=">1 is slower speech")
    sentence_silence_s: float = Field(default=0.2, ge=0.0, le=5.0)
    # Set by a line of a line file (jobs/line_files.py): the job's name in its batch.
    name: str | None = Field(default=None, pattern=NAME_PATTERN, description="its audio's name")


def speaker_id(speaker: int | str | None, voice: str, info: VoiceInfo) -> int | None:
    """The Piper speaker id of ``speaker`` on ``voice``; None when unset or single-speaker.

    A string is a name of the voice's ``speaker_id_map`` first, else an id in digits:
    some voices (LibriTTS-R's) name their speakers with numbers, and ``--speaker 3922``
    means that name. Raises InvalidInput for an unknown name or an id out of range,
    listing the voice's speakers.
    """
    if speaker is None:
        return None
    if isinstance(speaker, str) and speaker in info.speaker_id_map:
        return info.speaker_id_map[speaker]
    sid = speaker if isinstance(speaker, int) else _digits(speaker)
    if sid is None:
        names = _names(info) or "none (single-speaker voice)"
        raise InvalidInput(f"voice {voice!r} has no speaker {speaker!r}; speakers: {names}.")
    if not 0 <= sid < max(info.num_speakers, 1):
        names = f"; speakers: {_names(info)}" if info.speaker_id_map else ""
        raise InvalidInput(
            f"speaker {sid} is out of range for voice {voice!r}, which has "
            f"{info.num_speakers} speaker(s) (ids 0..{info.num_speakers - 1}){names}."
        )
    return sid if info.num_speakers > 1 else None


def _digits(speaker: str) -> int | None:
    try:
        return int(speaker) if speaker.isdecimal() else None  # not "²", which int() refuses
    except ValueError:  # more digits than Python converts
        return None


def _names(info: VoiceInfo) -> str:
    """The voice's speaker names with their ids, in id order: ``joe (0), slow (1)``."""
    by_id = sorted(info.speaker_id_map.items(), key=lambda kv: kv[1])
    return ", ".join(f"{name} ({sid})" for name, sid in by_id)


def check_text(raw: str, limit_bytes: int) -> str:
    size = len(raw.encode("utf-8"))
    if size > limit_bytes:
        raise InvalidInput(
            f"the text is {size / 1e6:.1f} MB, over the {limit_bytes / 1e6:.1f} MB limit "
            f"(max_text_bytes); split it, or use `stoker submit audiobook` for books."
        )
    clean = text.normalise(raw)
    if not clean.strip():
        raise InvalidInput("the text to speak is empty; pass --text or a non-empty --file.")
    return clean


def speech_chunks(pieces: list[str], fingerprint: str, sound: dict[str, Any]) -> list[ChunkPlan]:
    """One chunk per piece of text. The identity is the voice, the options that change
    the sound and the text alone, so `speak` and `audiobook` reuse each other's chunks."""
    return [
        ChunkPlan(payload={"text": p}, identity={"model": fingerprint, **sound, "text": p})
        for p in pieces
    ]


class SpeakCapability:
    kind: str = "speak"
    backend: str | None = "piper"
    chunk_ext: str = "wav"
    chunk_content_type: str = "audio/wav"
    work_stage: str = "synthesize"
    engines: tuple[tuple[str, str], ...] = (("piper", "speak"), ("soundfile", "speak"))

    def prepare(self, request: dict[str, Any], ctx: PrepareContext) -> Prepared:
        req: SpeakRequest = parse_request(request, SpeakRequest)
        clean = check_text(req.text, ctx.settings.max_text_bytes)
        voice = req.voice or ctx.settings.default_voice
        spec = ctx.catalog.get(voice, backend=self.backend)
        info = ctx.catalog.voice_info(voice)
        params = {
            "voice": voice,
            "format": req.format,
            "speaker_id": speaker_id(req.speaker, voice, info),
            "length_scale": req.length_scale,
            "sentence_silence_s": req.sentence_silence_s,
            "sample_rate": info.sample_rate,
            "text_chars": len(clean),
            **({"name": req.name} if req.name else {}),
        }
        sound = {k: params[k] for k in ("speaker_id", "length_scale", "sentence_silence_s")}
        pieces = text.pack_chunks(text.split_sentences(clean), ctx.settings.speak_chunk_chars)
        chunks = speech_chunks(pieces, spec.fingerprint, sound)
        return Prepared(
            params=params, model=voice, chunks=chunks, inputs={"input.txt": clean.encode("utf-8")}
        )

    def run_chunk(
        self, model: Any, params: dict[str, Any], payload: dict[str, Any], ctx: ChunkContext
    ) -> None:
        synthesize_to_wav(model, payload["text"], params, ctx.out, ctx.should_stop)

    def assemble(self, params: dict[str, Any], ctx: AssembleContext) -> list[Artifact]:
        chunk_files, workdir = ctx.chunk_files, ctx.workdir
        fmt = audio.FORMATS[params["format"]]
        out = workdir / f"{params.get('name') or 'speech'}.{fmt.ext}"
        seconds = audio.concatenate(
            chunk_files, out, fmt.ext, params["sample_rate"], params["sentence_silence_s"]
        )
        meta = {"duration_s": round(seconds, 3), "sample_rate": params["sample_rate"]}
        return [Artifact(out.name, out, fmt.content_type, meta)]


def synthesize_to_wav(
    voice: Any, chunk_text: str, params: dict[str, Any], out: Path, should_stop: StopCheck
) -> None:
    """Synthesize ``chunk_text`` with a loaded PiperVoice into a mono 16-bit WAV.

    Sentences are separated by ``params["sentence_silence_s"]`` of silence. Raises
    JobCancelled if ``should_stop()`` turns true between two sentences.
    """
    try:
        from piper import SynthesisConfig
    except ImportError as exc:
        raise MissingDependency("piper-tts", "speak", "Speaking text") from exc
    config = SynthesisConfig(speaker_id=params["speaker_id"], length_scale=params["length_scale"])
    rate = params["sample_rate"]
    silence = b"\x00\x00" * round(params["sentence_silence_s"] * rate)
    with wave.open(str(out), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        for i, sentence in enumerate(voice.synthesize(chunk_text, syn_config=config)):
            if should_stop():
                raise JobCancelled("the job was cancelled while this chunk was being spoken")
            if i:
                wav.writeframes(silence)
            wav.writeframes(sentence.audio_int16_bytes)
