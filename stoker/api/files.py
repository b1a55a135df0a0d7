"""Uploaded files (OpenAI's File object): bytes in storage under ``api-files/<id>``,
metadata in the API store. Batch output and error files are files of the same kind."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from stoker.api.errors import not_found
from stoker.api.keys import ApiKey
from stoker.api.meta import Doc, MetaStore
from stoker.storage import Storage
from stoker.storage.base import OCTET_STREAM

FILE_NS = "file"
PURPOSES = ("batch", "batch_output", "user_data", "assistants", "fine-tune", "vision", "evals")


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    owner: str

    @property
    def key(self) -> str:
        return storage_key(self.id)


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def storage_key(file_id: str) -> str:
    return f"api-files/{file_id}"


def _record(meta: MetaStore, obj: FileObject) -> FileObject:
    # The document's time is the float one, so that paging never skips files of one second.
    meta.put(Doc(FILE_NS, obj.id, obj.owner, time.time(), obj.model_dump()))
    return obj


def store_file(
    meta: MetaStore,
    storage: Storage,
    path: Path,
    *,
    filename: str,
    purpose: str,
    owner: str,
    file_id: str | None = None,
    content_type: str = OCTET_STREAM,
) -> FileObject:
    """Stream the file at ``path`` to storage (never whole in memory) and record it, as
    a new file id or as ``file_id`` (a batch's results: ids derived from the batch)."""
    file_id = file_id or new_file_id()
    info = storage.put_file(storage_key(file_id), path, content_type)
    obj = FileObject(
        id=file_id,
        bytes=info.size_bytes,
        created_at=int(time.time()),
        filename=filename,
        purpose=purpose,
        owner=owner,
    )
    return _record(meta, obj)


def get_file(meta: MetaStore, key: ApiKey, file_id: str) -> FileObject:
    """The file if ``key`` may see it; 404 otherwise."""
    doc = meta.get(FILE_NS, file_id)
    if doc is None or not (key.admin or doc.owner == key.owner):
        raise not_found("file", file_id)
    return FileObject.model_validate(doc.data)


def list_files(
    meta: MetaStore, key: ApiKey, *, limit: int, after: str | None, purpose: str | None
) -> list[FileObject]:
    """Newest first; ``after`` is the id of the last file of the previous page."""
    before = None
    if after:
        get_file(meta, key, after)  # 404 for a file the key may not see
        cursor = meta.get(FILE_NS, after)
        before = cursor.created_at if cursor else None
    owner = None if key.admin else key.owner
    found: list[Doc] = []
    while len(found) < limit:
        docs = meta.list(FILE_NS, owner, limit * 2, before)
        found += [d for d in docs if purpose is None or d.data.get("purpose") == purpose]
        if len(docs) < limit * 2:
            break
        before = docs[-1].created_at
    return [FileObject.model_validate(d.data) for d in found[:limit]]


def delete_file(meta: MetaStore, storage: Storage, key: ApiKey, file_id: str) -> FileObject:
    obj = get_file(meta, key, file_id)
    storage.delete(obj.key)
    meta.delete(FILE_NS, file_id)
    return obj
