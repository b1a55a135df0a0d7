"""OpenAI's synchronous routes: submit, wait up to ``api.sync_wait_s``, answer.

A capability that is neither installed here nor served by a live worker (with a
Redis fleet: the heartbeats) answers 503. A job still unfinished at the
deadline answers 504 with the job id (header ``X-Stoker-Job-Id`` and the message): it
keeps running and can be read at ``/v1/jobs/{id}``. We chose 504 over 202 because an
OpenAI client expects the result body or an error, never an accepted-for-later answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from stoker.api.deps import KeyDep, StateDep
from stoker.api.errors import ApiError
from stoker.api.files import FileObject
from stoker.api.keys import ApiKey
from stoker.api.openai_shapes import (
    ADAPTERS,
    EDIT_FIELDS,
    TRANSCRIPT_FORMATS,
    edit_request,
    output_named,
    transcription_request,
    verbose_transcription,
)
from stoker.api.routes.files import save_upload
from stoker.api.state import ApiState
from stoker.api.streaming import object_response
from stoker.api.submission import submit_job
from stoker.api.views import output_urls
from stoker.config import Settings
from stoker.jobs import CAPABILITIES, installed
from stoker.queues.records import JobRecord, JobState
from stoker.workers.coverage import capabilities_run, live_beats

router = APIRouter(prefix="/v1", tags=["openai"])

OpenAIBody = Annotated[dict[str, Any], Body(description="the OpenAI request body")]


def require_deployed(kind: str, settings: Settings | None = None) -> None:
    """503 unless ``kind`` can run: its engines are installed on this machine, or
    (with ``settings`` of a Redis fleet) a live worker serves it. An API box with no
    GPU need not install the models' libraries; the workers that run them do."""
    cap = CAPABILITIES.get(kind)
    if cap is not None and installed(cap):
        return
    served = capabilities_run(live_beats(settings) or []) if settings is not None else set()
    if cap is None or kind not in served:
        raise ApiError(
            503,
            f"the {kind} capability is not deployed on this stoker; ask the operator to "
            f"install it (pip install 'stoker[{kind}]') and run a worker for it.",
            type="server_error",
            code="capability_unavailable",
        )


def run_sync(state: ApiState, key: ApiKey, endpoint: str, body: dict[str, Any]) -> JobRecord:
    """Submit the request of ``endpoint`` and wait for its job; the finished record."""
    adapter = ADAPTERS[endpoint]
    require_deployed(adapter.kind, state.settings)
    request = adapter.to_request(body)
    record, _ = submit_job(
        state,
        key,
        kind=adapter.kind,
        params=request,
        priority="interactive",
        webhook=None,
        idempotency_key=None,
    )
    wait_s = state.settings.api.sync_wait_s
    try:
        done = state.metrics.job_seen(state.stoker.wait(record.id, timeout_s=wait_s))
    except TimeoutError:
        raise ApiError(
            504,
            f"job {record.id} did not finish within {wait_s:g} s; it keeps running: "
            f"read it at /v1/jobs/{record.id}.",
            type="server_error",
            code="timeout",
            headers={"X-Stoker-Job-Id": record.id},
        ) from None
    if done.state is JobState.SUCCEEDED:
        return done
    message = done.error.message if done.error else f"job {done.id} was {done.state}."
    code = done.error.kind if done.error else done.state.value
    if code in ("invalid_input", "unknown_model"):
        status, kind = 400, "invalid_request_error"
    elif done.state is JobState.CANCELLED:
        status, kind = 409, "invalid_request_error"
    else:  # the job failed on a worker (a model that would not load, a stoker bug)
        status, kind = 500, "server_error"
    raise ApiError(status, message, type=kind, code=code, headers={"X-Stoker-Job-Id": done.id})


def _answer(
    state: ApiState, key: ApiKey, endpoint: str, body: dict[str, Any], base_url: str
) -> dict[str, Any]:
    """Run ``body`` synchronously and answer in the endpoint's OpenAI shape."""
    record = run_sync(state, key, endpoint, body)
    adapter = ADAPTERS[endpoint]
    url_for = output_urls(state.stoker, record, base_url)
    return adapter.response_body(
        record, url_for, state.stoker.storage.get_bytes, adapter.options(body)
    )


@router.post(
    "/audio/speech",
    response_class=StreamingResponse,
    responses={200: {"content": {"audio/mpeg": {}, "audio/wav": {}}}},
)
def speech(body: OpenAIBody, state: StateDep, key: KeyDep) -> Response:
    """The audio itself, streamed from storage."""
    done = run_sync(state, key, "/v1/audio/speech", body)
    out = output_named(done, ".wav", ".mp3", ".flac", ".ogg")
    if out is None:
        raise ApiError(500, f"job {done.id} has no audio output.", type="server_error")
    headers = {"X-Stoker-Job-Id": done.id}
    return object_response(state.stoker.storage, out.key, out.content_type, headers=headers)


@router.post("/audio/transcriptions")
def transcriptions(
    state: StateDep,
    key: KeyDep,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form(max_length=128)] = "whisper-1",
    language: Annotated[str | None, Form(max_length=16)] = None,
    response_format: Annotated[str, Form(max_length=16)] = "json",
    # OpenAI's other form fields: named here so that each is used or refused
    # (transcription_request says why) rather than dropped by the form parser.
    prompt: Annotated[str | None, Form(max_length=4096)] = None,
    temperature: Annotated[float | None, Form()] = None,
    granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
    stream: Annotated[bool | None, Form()] = None,
) -> Response:
    fmt = TRANSCRIPT_FORMATS.get(response_format)
    if fmt is None:
        raise ApiError(
            400,
            f"response_format must be one of {', '.join(TRANSCRIPT_FORMATS)}.",
            param="response_format",
        )
    body: dict[str, Any] = {
        "model": model,
        "language": language or "auto",
        "response_format": response_format,
    }
    asked = {
        "prompt": prompt,
        "temperature": temperature,
        "timestamp_granularities": granularities,
        "stream": stream,
    }
    body |= {k: v for k, v in asked.items() if v is not None}
    # Checked before the upload is stored, so a refused request leaves nothing behind.
    transcription_request({**body, "file": "-"})
    require_deployed("transcribe", state.settings)
    with _uploaded(state, key, file) as upload:
        done = run_sync(state, key, "/v1/audio/transcriptions", {**body, "file": upload.id})
    out = output_named(done, f".{fmt}")
    text = state.stoker.storage.get_bytes(out.key).decode("utf-8") if out else ""
    if response_format == "json":
        return JSONResponse({"text": text.strip()})
    if response_format == "verbose_json":
        return JSONResponse(verbose_transcription(json.loads(text), body))
    return PlainTextResponse(text)


@contextmanager
def _uploaded(state: ApiState, key: ApiKey, file: UploadFile) -> Iterator[FileObject]:
    """A form's file stored as an upload of ``key`` for the block, then deleted: the job
    keeps its own copy of what it read (by content, under ``inputs/``)."""
    upload = save_upload(state, key, file, "user_data")
    try:
        yield upload
    finally:
        state.stoker.storage.delete(upload.key)
        state.meta.delete("file", upload.id)


@router.post("/embeddings")
def embeddings(body: OpenAIBody, state: StateDep, key: KeyDep, request: Request) -> dict[str, Any]:
    return _answer(state, key, "/v1/embeddings", body, str(request.base_url))


@router.post("/chat/completions")
def chat_completions(
    body: OpenAIBody, state: StateDep, key: KeyDep, request: Request
) -> dict[str, Any]:
    return _answer(state, key, "/v1/chat/completions", body, str(request.base_url))


@router.post("/completions")
def completions(body: OpenAIBody, state: StateDep, key: KeyDep, request: Request) -> dict[str, Any]:
    return _answer(state, key, "/v1/completions", body, str(request.base_url))


@router.post("/images/generations")
def images(body: OpenAIBody, state: StateDep, key: KeyDep, request: Request) -> dict[str, Any]:
    return _answer(state, key, "/v1/images/generations", body, str(request.base_url))


async def _form_names(request: Request) -> frozenset[str]:
    """The names of a form's fields, all of them: FastAPI's form parameters take the
    ones they name and drop the rest. (Starlette keeps the parsed form, so it is read
    once.)"""
    return frozenset((await request.form()).keys())


@router.post("/images/edits")
def image_edits(
    state: StateDep,
    key: KeyDep,
    request: Request,
    form_names: Annotated[frozenset[str], Depends(_form_names)],
    prompt: Annotated[str, Form()],
    image: Annotated[UploadFile | None, File()] = None,
    # OpenAI's client sends a list of images as image[]; stoker takes a list of one.
    image_list: Annotated[list[UploadFile] | None, File(alias="image[]")] = None,
    mask: Annotated[UploadFile | None, File()] = None,
    model: Annotated[str | None, Form(max_length=256)] = None,
    n: Annotated[int | None, Form()] = None,
    size: Annotated[str | None, Form(max_length=32)] = None,
    response_format: Annotated[str | None, Form(max_length=16)] = None,
    output_format: Annotated[str | None, Form(max_length=16)] = None,
    # OpenAI's other form fields: named so each is used, ignored or refused by
    # edit_request (which says why) rather than dropped by the form parser.
    background: Annotated[str | None, Form(max_length=16)] = None,
    quality: Annotated[str | None, Form(max_length=16)] = None,
    input_fidelity: Annotated[str | None, Form(max_length=16)] = None,
    output_compression: Annotated[int | None, Form()] = None,
    partial_images: Annotated[int | None, Form()] = None,
    stream: Annotated[bool | None, Form()] = None,
    user: Annotated[str | None, Form(max_length=256)] = None,
    # stoker's own (OpenAI's client sends them from extra_body)
    strength: Annotated[float | None, Form()] = None,
    steps: Annotated[int | None, Form()] = None,
    seed: Annotated[int | None, Form()] = None,
    negative_prompt: Annotated[str | None, Form()] = None,
    guidance_scale: Annotated[float | None, Form()] = None,
) -> dict[str, Any]:
    """An image redrawn from the uploaded one (image-to-image), only where ``mask``
    marks when one is given (inpainting); answered as a generation."""
    images = [f for f in (image, *(image_list or [])) if f is not None]
    if len(images) != 1:
        raise ApiError(
            400,
            f"give one starting image as the form field image ({len(images)} given): "
            f"stoker redraws one image.",
            param="image",
        )
    fields = {
        "prompt": prompt,
        "model": model,
        "n": n,
        "size": size,
        "response_format": response_format,
        "output_format": output_format,
        "background": background,
        "quality": quality,
        "input_fidelity": input_fidelity,
        "output_compression": output_compression,
        "partial_images": partial_images,
        "stream": stream,
        "user": user,
        "strength": strength,
        "steps": steps,
        "seed": seed,
        "negative_prompt": negative_prompt,
        "guidance_scale": guidance_scale,
    }
    # A field this route does not name is checked as a body's would be: one OpenAI's
    # models take and a pipeline has no use for passes, any other (a typo, a newer
    # OpenAI field) is refused, naming it, rather than silently dropped.
    EDIT_FIELDS.check(dict.fromkeys(form_names - set(fields) - {"image", "image[]", "mask"}))
    body = {k: v for k, v in fields.items() if v is not None}
    # Checked before the uploads are stored, so a refused request leaves nothing behind.
    edit_request({**body, "image": "-", **({} if mask is None else {"mask": "-"})})
    require_deployed("image", state.settings)
    with ExitStack() as uploads:
        body["image"] = uploads.enter_context(_uploaded(state, key, images[0])).id
        if mask is not None:
            body["mask"] = uploads.enter_context(_uploaded(state, key, mask)).id
        return _answer(state, key, "/v1/images/edits", body, str(request.base_url))
