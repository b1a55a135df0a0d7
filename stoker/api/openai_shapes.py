"""OpenAI request and response shapes ↔ stoker requests and results, one adapter per
endpoint. Batches and the synchronous routes both use these.

- ``/v1/audio/speech`` → ``speak``. ``input`` → text; ``voice`` is a catalog voice, or
  one of OpenAI's names (alloy, nova, ...) which mean the default voice; ``model`` names
  a catalog voice when it is not an OpenAI model name; ``response_format`` mp3, wav,
  flac, opus (→ ogg); ``speed`` → 1/length_scale.
  A *batch* line's response body cannot hold audio bytes, so it is JSON naming the
  output: ``{"object": "audio.speech", "job_id", "outputs": [{name, url, ...}]}``
  (presigned URLs expire after ``presign_expiry_s``; the job keeps the key).
- ``/v1/audio/transcriptions`` → ``transcribe`` (``file`` is an uploaded file id).
- ``/v1/embeddings`` → ``embed`` (``input``: a string or a list of strings); the body
  is OpenAI's ``list`` of ``embedding``, floats or (``encoding_format="base64"``, what
  the official client asks for by default) base64 of little-endian float32.
- ``/v1/chat/completions``, ``/v1/completions`` → ``generate``, translated by
  jobs/openai_generate.py (which also reads OpenAI Batch lines in prompt files): the
  sampling fields, ``response_format`` → ``json_schema``, a list of prompts → one
  choice each; fields it cannot honour (``tools``, ``logprobs``, ``stream``, ...) are
  refused. Its ``result.json`` is already in OpenAI's chat.completion /
  text_completion shape.
- ``/v1/images/generations`` → ``image``: ``n`` → count, ``size`` → width × height,
  ``output_format`` png/webp; stoker's own ``steps``, ``seed``, ``negative_prompt`` and
  ``guidance_scale`` pass through. The body lists the images as URLs, or as base64
  (``response_format="b64_json"``).
- ``/v1/images/edits`` → ``image`` from a starting image: ``image`` (an uploaded file
  id) → ``path``, ``mask`` (one too) and stoker's ``strength`` as they are. Answered as
  a generation is.

A request's *response options* (``encoding_format``, an image ``response_format``) do
not change the job, only how its result is answered: :attr:`Adapter.options` picks them
from the body, and the caller hands them back to :attr:`Adapter.response_body`.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stoker.errors import InvalidInput
from stoker.jobs import openai_generate
from stoker.jobs.openai_fields import STREAM_REFUSED, EndpointFields
from stoker.queues.records import JobRecord, OutputRef

#: (storage key) → readable URL, and (storage key) → bytes
UrlFor = Callable[[str], str]
ReadBytes = Callable[[str], bytes]

OPENAI_VOICES = frozenset(
    [
        "alloy",
        "ash",
        "ballad",
        "coral",
        "echo",
        "fable",
        "onyx",
        "nova",
        "sage",
        "shimmer",
        "verse",
        "marin",
        "cedar",
    ]
)
OPENAI_TTS_MODELS = frozenset({"tts-1", "tts-1-hd", "gpt-4o-mini-tts"})
#: OpenAI's own model names: they mean "the default model" here, so that a batch file
#: written for OpenAI runs unchanged.
OPENAI_MODEL_PREFIXES = (
    "gpt-",
    "o1",
    "o3",
    "o4",
    "text-embedding-",
    "davinci",
    "babbage",
    "dall-e",
    "tts-",
    "whisper-",
    "chatgpt-",
)
SPEECH_FORMATS = {"mp3": "mp3", "wav": "wav", "flac": "flac", "opus": "ogg"}


Options = dict[str, Any]


def no_options(body: dict[str, Any]) -> Options:
    return {}


@dataclass(frozen=True)
class Adapter:
    endpoint: str
    kind: str
    to_request: Callable[[dict[str, Any]], dict[str, Any]]  # raises InvalidInput
    response_body: Callable[[JobRecord, UrlFor, ReadBytes, Options], dict[str, Any]]
    #: the body's response options (validated by to_request), JSON-serialisable
    options: Callable[[dict[str, Any]], Options] = no_options
    #: whether its response points at the job's files by URL (audio, images,
    #: transcripts) rather than holding its whole result: `stoker get` copies them
    files: bool = False


def local_model(body: dict[str, Any]) -> dict[str, Any]:
    """``{"model": name}`` when the body names a model of this stoker, else ``{}``."""
    model = body.get("model")
    if isinstance(model, str) and model and not model.startswith(OPENAI_MODEL_PREFIXES):
        return {"model": model}
    return {}


def _text(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"body.{field} must be a non-empty string.")
    return value


def _outputs(record: JobRecord, url_for: UrlFor) -> list[dict[str, Any]]:
    return [
        {
            "name": o.name,
            "content_type": o.content_type,
            "bytes": o.size_bytes,
            "key": o.key,
            "url": url_for(o.key),
        }
        for o in record.outputs
        if o.is_result
    ]


def output_named(record: JobRecord, *suffixes: str) -> OutputRef | None:
    """The first non-partial output whose name ends with one of ``suffixes``."""
    return next((o for o in record.outputs if not o.partial and o.name.endswith(suffixes)), None)


# --- speak -----------------------------------------------------------------------------


SPEECH_FIELDS = EndpointFields(
    "/v1/audio/speech",
    used=frozenset({"input", "voice", "model", "response_format", "speed"}),
    refused={
        "instructions": (
            (None, ""),
            "instructions are not supported: a Piper voice speaks one way; choose the "
            "voice (voice or model) instead",
        ),
        "stream_format": ((None, "audio"), STREAM_REFUSED),
    },
)


def speech_request(body: dict[str, Any]) -> dict[str, Any]:
    SPEECH_FIELDS.check(body)
    request: dict[str, Any] = {"text": _text(body, "input")}
    voice, model = body.get("voice"), body.get("model")
    if isinstance(voice, str) and voice and voice not in OPENAI_VOICES:
        request["voice"] = voice
    elif isinstance(model, str) and model and model not in OPENAI_TTS_MODELS:
        request["voice"] = model
    fmt = body.get("response_format", "mp3")
    if fmt not in SPEECH_FORMATS:
        raise InvalidInput(
            f"body.response_format {fmt!r} is not supported; use one of "
            f"{', '.join(SPEECH_FORMATS)}."
        )
    request["format"] = SPEECH_FORMATS[fmt]
    speed = body.get("speed")
    if speed is not None:
        if not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
            raise InvalidInput("body.speed must be a number from 0.25 to 4.0.")
        request["length_scale"] = round(1.0 / speed, 4)
    return request


def speech_body(
    record: JobRecord, url_for: UrlFor, read: ReadBytes, options: Options
) -> dict[str, Any]:
    return {"object": "audio.speech", "job_id": record.id, "outputs": _outputs(record, url_for)}


# --- transcribe --------------------------------------------------------------------------


#: OpenAI's response_format → the transcript format that answers it
TRANSCRIPT_FORMATS = {
    "json": "txt",
    "text": "txt",
    "srt": "srt",
    "vtt": "vtt",
    "verbose_json": "json",
}


TRANSCRIPTION_FIELDS = EndpointFields(
    "/v1/audio/transcriptions",
    used=frozenset({"file", "model", "language", "response_format", "timestamp_granularities"}),
    refused={
        "prompt": (
            (None, ""),
            "a prompt to steer the transcript is not supported; leave it out",
        ),
        "temperature": (
            (None, 0, 0.0),
            "temperature is not supported: stoker decodes with beam search and "
            "faster-whisper's own fallback; leave it out",
        ),
        "include": ((None, []), "log-probabilities are not returned; leave it out"),
        "chunking_strategy": ((None, "auto"), "stoker chunks by silence itself; leave it out"),
        "stream": ((None, False), STREAM_REFUSED),
    },
)


def transcription_request(body: dict[str, Any]) -> dict[str, Any]:
    TRANSCRIPTION_FIELDS.check(body)
    file_id = _text(body, "file")
    fmt = TRANSCRIPT_FORMATS.get(str(body.get("response_format", "json")))
    if fmt is None:
        raise InvalidInput(f"body.response_format must be one of {', '.join(TRANSCRIPT_FORMATS)}.")
    formats = ["txt"] if fmt == "txt" else ["txt", fmt]
    request: dict[str, Any] = {"path": file_id, "formats": formats}
    request |= local_model(body)
    if isinstance(body.get("language"), str):
        request["language"] = body["language"]
    if "word" in _granularities(body):
        request["word_timestamps"] = True
    return request


def _granularities(body: dict[str, Any]) -> set[str]:
    """The timestamp granularities asked for; word ones need verbose_json, as at OpenAI."""
    asked = body.get("timestamp_granularities")
    if asked is None:
        return {"segment"}
    if not isinstance(asked, list) or not asked or not set(asked) <= {"segment", "word"}:
        raise InvalidInput(
            'body.timestamp_granularities must list "segment", "word" or both.',
            param="timestamp_granularities",
        )
    if "word" in asked and body.get("response_format") != "verbose_json":
        raise InvalidInput(
            "body.timestamp_granularities: word timestamps come only with response_format "
            "verbose_json; ask for that format too.",
            param="timestamp_granularities",
        )
    return set(asked)


def verbose_transcription(transcript: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``verbose_json`` answer from stoker's transcript JSON (transcript.py).

    ``language`` stays the ISO code (OpenAI answers the language's English name), and
    a segment has the fields stoker keeps: not Whisper's ``seek``, ``tokens``,
    ``temperature`` or ``compression_ratio``.
    """
    segments = transcript["segments"]
    answer: dict[str, Any] = {
        "task": "transcribe",
        "language": transcript["language"] or "",
        "duration": transcript["duration_s"],
        "text": transcript["text"],
        "segments": [
            {
                "id": i,
                "start": s["start"],
                "end": s["end"],
                "text": s["text"],
                "avg_logprob": s["avg_logprob"],
                "no_speech_prob": s["no_speech_prob"],
            }
            for i, s in enumerate(segments)
        ],
    }
    if "word" in _granularities(body):
        answer["words"] = [
            {"word": w["word"].strip(), "start": w["start"], "end": w["end"]}
            for s in segments
            for w in s["words"]
        ]
    return answer


def transcription_body(
    record: JobRecord, url_for: UrlFor, read: ReadBytes, options: Options
) -> dict[str, Any]:
    txt = output_named(record, ".txt")
    text = read(txt.key).decode("utf-8").strip() if txt else ""
    return {"text": text, "job_id": record.id, "outputs": _outputs(record, url_for)}


# --- embed -------------------------------------------------------------------------------

EMBEDDING_ENCODINGS = ("float", "base64")


EMBEDDING_FIELDS = EndpointFields(
    "/v1/embeddings",
    used=frozenset({"input", "model", "encoding_format", "normalize", "prompt"}),
    ignored=frozenset({"user"}),
    refused={
        "dimensions": (
            (None,),
            "the model's vectors have a fixed size, so it cannot be chosen; leave it out",
        )
    },
)


def embeddings_request(body: dict[str, Any]) -> dict[str, Any]:
    EMBEDDING_FIELDS.check(body)
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidInput(
            "body.input must be a string or a list of strings (token arrays are not supported)."
        )
    embeddings_options(body)
    request: dict[str, Any] = {"texts": texts, "format": "jsonl", **local_model(body)}
    # stoker's own (the embed request's): unit-length vectors, a retrieval prefix
    request |= {k: body[k] for k in ("normalize", "prompt") if body.get(k) is not None}
    return request


def embeddings_options(body: dict[str, Any]) -> Options:
    encoding = body.get("encoding_format") or "float"
    if encoding not in EMBEDDING_ENCODINGS:
        raise InvalidInput("body.encoding_format must be 'float' or 'base64'.")
    return {"encoding_format": encoding} if encoding != "float" else {}


def _b64_floats(vector: list[float]) -> str:
    """OpenAI's base64 encoding: the vector's little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def embeddings_body(
    record: JobRecord, url_for: UrlFor, read: ReadBytes, options: Options
) -> dict[str, Any]:
    out = output_named(record, ".jsonl")
    lines = read(out.key).decode("utf-8").splitlines() if out else []
    rows = [json.loads(line) for line in lines if line.strip()]
    as_base64 = options.get("encoding_format") == "base64"
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _b64_floats(r["embedding"]) if as_base64 else r["embedding"],
        }
        for i, r in enumerate(rows)
    ]
    # Each line carries the tokens the model read of its text (0 for outputs made
    # before stoker counted them).
    tokens = sum(int(r.get("tokens", 0)) for r in rows)
    return {
        "object": "list",
        "data": data,
        "model": record.model or "",
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# --- generate ----------------------------------------------------------------------------


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    return {**openai_generate.generate_fields(body, openai_generate.CHAT), **local_model(body)}


def completion_request(body: dict[str, Any]) -> dict[str, Any]:
    fields = openai_generate.generate_fields(body, openai_generate.COMPLETIONS)
    return {**fields, **local_model(body)}


def generate_body(
    record: JobRecord, url_for: UrlFor, read: ReadBytes, options: Options
) -> dict[str, Any]:
    out = output_named(record, "result.json")
    if out is None:
        raise InvalidInput(f"job {record.id} has no result.json to answer with.")
    body: dict[str, Any] = json.loads(read(out.key))
    return body


# --- image -------------------------------------------------------------------------------

IMAGE_RESPONSE_FORMATS = ("url", "b64_json")
#: stoker's own image fields, passed through as they are (the capability checks them)
IMAGE_EXTRAS = ("steps", "seed", "negative_prompt", "guidance_scale")


IMAGE_FIELDS = EndpointFields(
    "/v1/images/generations",
    used=frozenset({"prompt", "model", "n", "size", "output_format", "response_format"})
    | frozenset(IMAGE_EXTRAS),
    # OpenAI's own models' hints: a local pipeline's are steps and guidance_scale.
    ignored=frozenset({"user", "quality", "style", "moderation", "output_compression"}),
    refused={
        "background": (
            (None, "auto", "opaque"),
            "transparent backgrounds are not supported: the pipeline paints every pixel",
        ),
        "partial_images": ((None, 0), "partial images are not supported; leave it out"),
        "stream": ((None, False), STREAM_REFUSED),
    },
)


#: /v1/images/edits: the fields of a generation, a starting image, and how far to move
#: from it (stoker's ``strength``); OpenAI's models edit, a diffusion pipeline redraws.
EDIT_FIELDS = EndpointFields(
    "/v1/images/edits",
    used=IMAGE_FIELDS.used | {"image", "mask", "strength"},
    ignored=IMAGE_FIELDS.ignored | {"input_fidelity", "safety_identifier"},
    refused=IMAGE_FIELDS.refused,
)


def image_request(body: dict[str, Any]) -> dict[str, Any]:
    return _image_request(body, IMAGE_FIELDS)


def edit_request(body: dict[str, Any]) -> dict[str, Any]:
    """An edit as an image job from a starting image: ``image`` (a file id; one, or a
    list of one) → ``path``; ``mask`` (a file id: its transparent parts are redrawn)
    and ``strength`` as they are."""
    request = _image_request(body, EDIT_FIELDS)
    image = body.get("image")
    if isinstance(image, list) and len(image) == 1:
        image = image[0]
    if not isinstance(image, str) or not image:
        raise InvalidInput(
            "body.image must be one starting image (a file id): stoker redraws one image.",
            param="image",
        )
    request["path"] = image
    request |= {k: body[k] for k in ("mask", "strength") if body.get(k) is not None}
    return request


def _image_request(body: dict[str, Any], fields: EndpointFields) -> dict[str, Any]:
    fields.check(body)
    request: dict[str, Any] = {"prompt": _text(body, "prompt")}
    image_options(body)
    n = body.get("n", 1)
    if not isinstance(n, int) or not 1 <= n <= 16:
        raise InvalidInput("body.n must be an integer from 1 to 16.")
    request["count"] = n
    size = body.get("size")
    if isinstance(size, str) and size != "auto":
        width, _, height = size.partition("x")
        if not (width.isdigit() and height.isdigit()):
            raise InvalidInput(f"body.size {size!r} must look like 512x512.")
        request["width"], request["height"] = int(width), int(height)
    fmt = body.get("output_format")
    if fmt is not None:
        if fmt not in ("png", "webp"):
            raise InvalidInput("body.output_format must be 'png' or 'webp'.")
        request["format"] = fmt
    request |= {k: body[k] for k in IMAGE_EXTRAS if body.get(k) is not None}
    return {**request, **local_model(body)}


def image_options(body: dict[str, Any]) -> Options:
    fmt = body.get("response_format") or "url"
    if fmt not in IMAGE_RESPONSE_FORMATS:
        raise InvalidInput("body.response_format must be 'url' or 'b64_json'.")
    return {"response_format": fmt} if fmt != "url" else {}


def image_body(
    record: JobRecord, url_for: UrlFor, read: ReadBytes, options: Options
) -> dict[str, Any]:
    images = sorted(
        (o for o in record.outputs if not o.partial and o.content_type.startswith("image/")),
        key=lambda o: o.name,
    )
    created = int(record.finished_at or time.time())
    if options.get("response_format") == "b64_json":
        data = [{"b64_json": base64.b64encode(read(o.key)).decode("ascii")} for o in images]
    else:
        data = [{"url": url_for(o.key)} for o in images]
    return {"created": created, "data": data}


ADAPTERS: dict[str, Adapter] = {
    a.endpoint: a
    for a in (
        Adapter("/v1/audio/speech", "speak", speech_request, speech_body, files=True),
        Adapter(
            "/v1/audio/transcriptions",
            "transcribe",
            transcription_request,
            transcription_body,
            files=True,
        ),
        Adapter("/v1/embeddings", "embed", embeddings_request, embeddings_body, embeddings_options),
        Adapter("/v1/chat/completions", "generate", chat_request, generate_body),
        Adapter("/v1/completions", "generate", completion_request, generate_body),
        Adapter(
            "/v1/images/generations",
            "image",
            image_request,
            image_body,
            image_options,
            files=True,
        ),
        Adapter("/v1/images/edits", "image", edit_request, image_body, image_options, files=True),
    )
}


def adapter_for(url: str) -> Adapter:
    """The adapter of an endpoint; InvalidInput naming the supported ones otherwise."""
    try:
        return ADAPTERS[url]
    except KeyError:
        raise InvalidInput(
            f"endpoint {url!r} is not supported; use one of {', '.join(sorted(ADAPTERS))}."
        ) from None
