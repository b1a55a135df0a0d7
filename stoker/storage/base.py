"""What every storage backend offers: a flat namespace of keys holding bytes.

Two implementations pass the same contract tests (tests/integration/test_storage_contract.py):
:class:`~stoker.storage.local.LocalStorage` for the embedded default and
:class:`~stoker.storage.s3.S3Storage` for any S3-compatible store. Keys are validated by
:func:`stoker.storage.keys.validate_key` in every method, so a bad key fails the same way
everywhere (``errors.InvalidInput``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from stoker.errors import InvalidInput

OCTET_STREAM = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"
# SigV4 presigned URLs cannot live longer than 7 days.
MAX_URL_EXPIRY_S = 7 * 24 * 3600


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object."""

    key: str  # relative to the storage root, '/'-separated
    size_bytes: int
    content_type: str | None = None  # None when unknown (and always from list())
    modified_at: float | None = None  # seconds since the epoch, from list(); else None


class Storage(Protocol):
    """A storage root. Methods raise ``InvalidInput`` for a bad key, ``ConfigError`` when the
    backend is misconfigured (missing bucket, bad credentials) and ``StorageUnavailable``
    when it cannot be reached right now (retry later)."""

    url: str  # the root URL it was opened with, e.g. "file:///x/outputs" or "s3://bucket/prefix"
    # Each call is a network round trip (S3): callers with many calls to make overlap
    # them on threads. Local calls are kernel work that would only compete for the CPU.
    remote: bool

    def put_bytes(self, key: str, data: bytes, content_type: str = OCTET_STREAM) -> ObjectInfo:
        """Store ``data`` at ``key``, replacing any object there."""

    def put_file(self, key: str, path: Path, content_type: str = OCTET_STREAM) -> ObjectInfo:
        """Stream the file at ``path`` to ``key`` (multipart on S3 for big files).

        Never reads the whole file into memory. Raises InvalidInput if ``path`` is not a file.
        """

    def put_json(self, key: str, obj: Any) -> ObjectInfo:
        """Store ``obj`` as UTF-8 JSON (indent 2) with content type application/json."""

    def copy(self, src_key: str, dst_key: str, content_type: str = OCTET_STREAM) -> ObjectInfo:
        """Store a copy of the object at ``src_key`` at ``dst_key``, replacing any object
        there, without the bytes passing through this process: a server-side (multipart
        past the threshold, so past 5 GB too) copy on S3, a hard link where possible
        locally. The copy has ``content_type``. Later writes to either key do not change
        the other. Returns the copy's info.

        Raises ObjectNotFound if there is no object at ``src_key``, InvalidInput if either
        key is bad (checked before anything is read).
        """

    def get_bytes(self, key: str) -> bytes:
        """The whole object. Raises ObjectNotFound."""

    def download(self, key: str, path: Path) -> Path:
        """Stream the object to ``path`` (parent dirs created) and return ``path``.

        Raises ObjectNotFound.
        """

    def open(self, key: str) -> BinaryIO:
        """A streaming read handle on the object; the caller closes it. Raises ObjectNotFound."""

    def exists(self, key: str) -> bool:
        """Whether an object is stored at exactly ``key``."""

    def stat(self, key: str) -> ObjectInfo:
        """Size and content type of the object. Raises ObjectNotFound."""

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key.

        ``prefix`` is '' or a valid key optionally ending in '/'. Results carry no content
        type. Lazy: S3 pages are fetched as the iterator is consumed.
        """

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""

    def url_for(self, key: str, expires_s: int | None = None) -> str:
        """A URL to read the object: presigned GET on S3, a file:// URL locally.

        ``expires_s`` (1 s to 7 days) defaults to ``settings.presign_expiry_s``; it does not
        apply to file:// URLs. Does not check that the object exists. Raises InvalidInput.
        """


def json_bytes(obj: Any) -> bytes:
    """``obj`` as UTF-8 JSON with indent 2: what :meth:`Storage.put_json` stores."""
    return json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8")


def require_file(path: Path, key: str) -> int:
    """Size in bytes of the regular file at ``path`` that is to be stored at ``key``.

    Raises InvalidInput if there is no such file.
    """
    if not path.is_file():
        raise InvalidInput(
            f"cannot store {path} at {key!r}: it is not an existing file; check the path."
        )
    return path.stat().st_size


def check_expiry(expires_s: int | None) -> None:
    """Raise InvalidInput unless ``expires_s`` is None or within 1 s .. 7 days."""
    if expires_s is not None and not 0 < expires_s <= MAX_URL_EXPIRY_S:
        raise InvalidInput(
            f"URL expiry of {expires_s} s is out of range; pass 1 to {MAX_URL_EXPIRY_S} seconds."
        )
