"""/v1/files: OpenAI's Files API (uploads streamed to storage, never whole in memory)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import StreamingResponse

from stoker.api import files
from stoker.api.deps import KeyDep, StateDep
from stoker.api.errors import ApiError
from stoker.api.keys import ApiKey
from stoker.api.state import ApiState
from stoker.api.streaming import object_response

router = APIRouter(prefix="/v1/files", tags=["files"])

_COPY_BYTES = 1 << 20


def save_upload(state: ApiState, key: ApiKey, upload: UploadFile, purpose: str) -> files.FileObject:
    """Copy the spooled upload to a named temporary file, then stream it to storage."""
    filename = Path(upload.filename or "upload").name or "upload"
    with tempfile.TemporaryDirectory(prefix="stoker-upload-") as tmp:
        path = Path(tmp) / "data"
        with path.open("wb") as out:
            shutil.copyfileobj(upload.file, out, _COPY_BYTES)
        return files.store_file(
            state.meta,
            state.stoker.storage,
            path,
            filename=filename,
            purpose=purpose,
            owner=key.owner,
        )


@router.post("", response_model=files.FileObject)
def create_file(
    state: StateDep,
    key: KeyDep,
    file: Annotated[UploadFile, File(description="the file (JSONL for purpose batch)")],
    purpose: Annotated[str, Form(max_length=32)],
) -> files.FileObject:
    if purpose not in files.PURPOSES:
        raise ApiError(
            400, f"purpose {purpose!r} is not known; use 'batch' for batch input.", param="purpose"
        )
    return save_upload(state, key, file, purpose)


@router.get("")
def list_files(
    state: StateDep,
    key: KeyDep,
    after: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    purpose: Annotated[str | None, Query(max_length=32)] = None,
) -> dict[str, Any]:
    found = files.list_files(state.meta, key, limit=limit + 1, after=after, purpose=purpose)
    page = [f.model_dump() for f in found[:limit]]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(found) > limit,
    }


@router.get("/{file_id}", response_model=files.FileObject)
def get_file(file_id: str, state: StateDep, key: KeyDep) -> files.FileObject:
    return files.get_file(state.meta, key, file_id)


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def file_content(file_id: str, state: StateDep, key: KeyDep) -> StreamingResponse:
    obj = files.get_file(state.meta, key, file_id)
    storage = state.stoker.storage
    return object_response(storage, obj.key, "application/octet-stream", size=obj.bytes)


@router.delete("/{file_id}")
def delete_file(file_id: str, state: StateDep, key: KeyDep) -> dict[str, Any]:
    obj = files.delete_file(state.meta, state.stoker.storage, key, file_id)
    return {"id": obj.id, "object": "file", "deleted": True}
