"""Job stores: :func:`open_job_store` picks one from ``settings.state_url``.

``RedisJobStore`` is imported on first use, so that processes on the embedded SQLite
store never import redis.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from stoker.config import Settings
from stoker.errors import ConfigError
from stoker.queues.stores.base import JobStore, safe_url
from stoker.queues.stores.sqlite import SqliteJobStore

if TYPE_CHECKING:
    from stoker.queues.stores.redis import RedisJobStore

__all__ = ["JobStore", "RedisJobStore", "SqliteJobStore", "open_job_store", "sqlite_path"]

_SQLITE = "sqlite:///"


def open_job_store(settings: Settings) -> JobStore:
    """The job store named by ``settings.state_url``.

    ``sqlite:///<path>`` opens (and creates) that file, with SQLAlchemy's convention:
    ``sqlite:////abs/jobs.sqlite`` is absolute, ``sqlite:///jobs.sqlite`` relative to
    the working directory. ``redis://`` and ``rediss://`` URLs use Redis under the key
    prefix "stoker". Raises ConfigError for any other URL or an unusable path.
    """
    url = settings.state_url
    if url.startswith(("redis://", "rediss://")):
        from stoker.queues.stores.redis import RedisJobStore

        return RedisJobStore(url, prefix="stoker")
    if url.startswith(_SQLITE) and url != _SQLITE:
        return SqliteJobStore(sqlite_path(url))
    raise ConfigError(
        f"state_url {safe_url(url)!r} is not supported; use sqlite:///<path to a file> "
        f"for one machine, or redis://host:port/db (rediss:// for TLS) to share jobs."
    )


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///<path>`` URL (see :func:`open_job_store`), its directory
    created. Other parts (the API's own tables) keep their records in the same file.
    Raises ConfigError when the directory cannot be created."""
    path = Path(url.removeprefix(_SQLITE)).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the directory {path.parent} for the job store "
            f"({exc.strerror}); check state_url."
        ) from exc
    return path


def __getattr__(name: str) -> Any:
    if name == "RedisJobStore":
        from stoker.queues.stores.redis import RedisJobStore

        return RedisJobStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
