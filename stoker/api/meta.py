"""Where the API keeps its own records: API keys, uploaded files, batches, idempotency
keys and webhook deliveries. Beside the job store, on the same backend: a Redis hash per
record when ``state_url`` is Redis, a SQLite table otherwise (the choice
:func:`stoker.queues.stores.open_job_store` makes).

Every record is a JSON document in a namespace (``ns``), with an owner and a creation
time; lists are newest first, per owner or for all owners (admin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from stoker.config import Settings


@dataclass(frozen=True)
class Doc:
    ns: str
    id: str
    owner: str
    created_at: float
    data: dict[str, Any]


class MetaStore(Protocol):
    def put(self, doc: Doc) -> None:
        """Create or replace the document (ns, id)."""

    def insert_new(self, doc: Doc) -> bool:
        """Create the document unless (ns, id) exists; True if it was created."""

    def get(self, ns: str, id: str) -> Doc | None:
        """The document, or None."""

    def delete(self, ns: str, id: str) -> None:
        """Remove the document; a missing one is not an error."""

    def list(
        self, ns: str, owner: str | None, limit: int, before: float | None = None
    ) -> list[Doc]:
        """Newest first, at most ``limit``; ``owner`` None lists every owner's;
        ``before`` keeps documents created strictly before that time."""

    def claim(self, name: str, ttl_s: float) -> bool:
        """Take the claim ``name`` for ``ttl_s`` seconds, atomically across processes:
        True for exactly one caller until it expires (then the next caller may take it).
        Used so that several API processes deliver each webhook attempt once."""

    def close(self) -> None:
        """Release connections."""


def open_meta_store(settings: Settings) -> MetaStore:
    """The API's store on the job store's backend (``settings.state_url``)."""
    url = settings.state_url
    if url.startswith(("redis://", "rediss://")):
        from stoker.api.meta_redis import RedisMetaStore

        return RedisMetaStore(url, prefix="stoker:api")
    from stoker.api.meta_sqlite import SqliteMetaStore
    from stoker.queues.stores import sqlite_path

    return SqliteMetaStore(sqlite_path(url))
