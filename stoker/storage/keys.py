"""Object keys: the one place that decides what a key may look like and how keys are laid out.

A key is relative to a storage root, '/'-separated, and the same string on every backend.
Layout::

    jobs/<job_id>/inputs/<name>        what a job was submitted with
    jobs/<job_id>/<name>               what a job produced
    chunks/<kind>/<dd>/<digest>.<ext>  content-addressed intermediate results (dd = digest[:2])
    inputs/<dd>/<digest>.<ext>         uploaded inputs, stored once by content
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from stoker.errors import InvalidInput

MAX_KEY_BYTES = 1024  # S3's limit on a key, in UTF-8 bytes
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a safe relative object key.

    Raises :class:`InvalidInput` if it is empty, absolute, contains a '.' or '..' or empty
    segment, a backslash, a NUL or other control character, or is over 1024 UTF-8 bytes.
    """
    problem = _key_problem(key)
    if problem:
        raise InvalidInput(
            f"storage key {key!r} is invalid: it {problem}; use a relative '/'-separated path "
            f"such as 'jobs/<id>/out.wav'."
        )
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is '' or a valid key, optionally ending in one '/'.

    Raises :class:`InvalidInput` otherwise (see :func:`validate_key`).
    """
    if prefix:
        validate_key(prefix.removesuffix("/"))
    return prefix


def _key_problem(key: str) -> str | None:
    if not key:
        return "is empty"
    if key.startswith("/"):
        return "is absolute (starts with '/')"
    if "\\" in key:
        return "contains a backslash"
    if _CONTROL.search(key):
        return "contains a NUL or control character"
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        return f"is longer than {MAX_KEY_BYTES} bytes"
    segments = key.split("/")
    if "" in segments:
        return "has an empty segment ('//' or a trailing '/')"
    if "." in segments or ".." in segments:
        return "has a '.' or '..' segment"
    return None


def content_digest(obj: Any) -> str:
    """SHA-256 hex digest of ``obj``'s canonical JSON (sorted keys, no spaces, UTF-8).

    ``bytes`` (top-level or nested) stand for their own SHA-256 hex digest, so a digest of
    audio or a file's content does not need the data inlined. Equal dicts give equal digests
    whatever their key order. Raises ``TypeError`` for values JSON cannot encode.
    """
    if isinstance(obj, bytes | bytearray):
        return hashlib.sha256(obj).hexdigest()
    canonical = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_bytes_digest
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _bytes_digest(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return hashlib.sha256(value).hexdigest()
    raise TypeError(f"cannot digest a {type(value).__name__}; pass JSON values or bytes")


def job_prefix(job_id: str) -> str:
    """The prefix under which everything of job ``job_id`` lives: ``jobs/<job_id>/``.

    Raises InvalidInput if ``job_id`` is not a single valid key segment.
    """
    if "/" in validate_key(job_id):
        raise InvalidInput(f"job id {job_id!r} contains '/'; a job id must be one path segment.")
    return f"jobs/{job_id}/"


def job_key(job_id: str, name: str) -> str:
    """Key of an output ``name`` of a job: ``jobs/<job_id>/<name>``. Raises InvalidInput."""
    return validate_key(f"{job_prefix(job_id)}{name}")


def input_key(job_id: str, name: str) -> str:
    """Key of an input ``name`` of a job: ``jobs/<job_id>/inputs/<name>``. Raises InvalidInput."""
    return validate_key(f"{job_prefix(job_id)}inputs/{name}")


def chunk_key(kind: str, digest: str, ext: str) -> str:
    """Content-addressed key: ``chunks/<kind>/<digest[:2]>/<digest>.<ext>`` (ext without '.').

    The two-character fan-out keeps local directories small. Raises InvalidInput.
    """
    return validate_key(f"chunks/{kind}/{digest[:2]}/{digest}.{ext}")


def content_input_key(digest: str, ext: str) -> str:
    """Where an uploaded input lives, by content: ``inputs/<digest[:2]>/<digest>.<ext>``.

    The same recording submitted twice (or by two batches) is stored once.
    """
    return validate_key(f"inputs/{digest[:2]}/{digest}.{ext}")


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of the file at ``path``, read a MiB at a time: its input key's digest."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
