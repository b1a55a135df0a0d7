"""A job's inputs over HTTP: text in params, an uploaded file id, or an ``s3://`` URI.

The API host's own files are never readable through a request: a param that names a
file (:data:`FILE_FIELDS`) is accepted only when it resolves (symlinks followed, ``..``
collapsed) inside one of the configured ``api.path_roots``. An uploaded file
(``file-...``) is copied from storage to a temporary folder for the submission (the
capability stores what it needs), then removed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from stoker.api.errors import ApiError
from stoker.api.files import get_file
from stoker.api.keys import ApiKey
from stoker.api.state import ApiState
from stoker.jobs.base import FILE_FIELDS
from stoker.storage.sources import is_s3_url


def merge_input(params: dict[str, Any], input: str | None) -> dict[str, Any]:
    """``input`` as the params it stands for: a file id or s3:// URI → ``path``, text →
    ``text``; an explicit param of the same name wins."""
    if input is None:
        return params
    field = "path" if input.startswith("file-") or is_s3_url(input) else "text"
    return {field: input, **params}


def local_path(raw: str, roots: list[Path], field: str = "path") -> Path:
    """``raw`` resolved inside one of ``roots``; ApiError 400 otherwise."""
    refused = ApiError(
        400,
        f"params.{field} {raw!r} is not readable through the API: upload the file to "
        f"/v1/files and pass its id, or pass an s3:// URI.",
        param=f"params.{field}",
        code="path_not_allowed",
    )
    if not roots or "\x00" in raw:
        raise refused
    path = Path(raw)
    if not path.is_absolute():
        path = roots[0] / path
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        raise refused from None
    if any(resolved.is_relative_to(root.resolve()) for root in roots):
        return resolved
    raise refused


@contextmanager
def resolved(state: ApiState, key: ApiKey, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``params`` with each file it names (:data:`FILE_FIELDS`) made usable by the
    submitting client, for the block."""
    with ExitStack() as stack:
        local = dict(params)
        for field in FILE_FIELDS:
            if params.get(field) is not None:
                local[field] = stack.enter_context(_usable(state, key, field, params[field]))
        yield local


@contextmanager
def _usable(state: ApiState, key: ApiKey, field: str, raw: Any) -> Iterator[str]:
    """``raw`` as a location the client reads: an s3:// URI as it is, a path checked
    against the roots, an uploaded file's id as a temporary copy."""
    if isinstance(raw, str) and is_s3_url(raw):
        yield raw
        return
    if not isinstance(raw, str):
        raise ApiError(400, f"params.{field} must be a string.", param=f"params.{field}")
    if not raw.startswith("file-"):
        yield str(local_path(raw, state.settings.api.path_roots, field))
        return
    obj = get_file(state.meta, key, raw)
    name = Path(obj.filename).name or "input"
    with tempfile.TemporaryDirectory(prefix="stoker-api-") as tmp:
        # Saved under its uploaded name (a base name since upload), which a capability
        # that names its input by the file (transcribe) takes from the path.
        yield str(state.stoker.storage.download(obj.key, Path(tmp) / name))
