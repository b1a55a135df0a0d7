"""The one settings object.

Built once by an entry point (the CLI, a worker, the API factory) with
:func:`load_settings` and passed down. Nothing else in stoker reads the environment.

Sources, strongest first: explicit overrides (CLI flags, tests), ``STOKER_*``
environment variables (nested with ``__``, e.g. ``STOKER_BUDGETS__CPU=4GiB``), then
a TOML file (``--config``, ``$STOKER_CONFIG``, or ``~/.config/stoker/stoker.toml``).

With nothing configured, everything is embedded under ``data_dir``: a SQLite broker
(kombu's SQLAlchemy transport), a SQLite job store, and a local outputs directory.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ByteSize, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from stoker.errors import ConfigError

Priority = Literal["interactive", "normal", "bulk"]

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("stoker_config_file", default=None)


class ModelEntry(BaseModel):
    """A model that lives at a path (not shipped as a Python package)."""

    model_config = {"extra": "forbid"}

    backend: str = Field(description="loader to use: 'piper', ...")
    path: Path = Field(description="the model file or folder")
    config: Path | None = Field(default=None, description="a side file (Piper's .onnx.json)")
    options: dict[str, Any] = Field(default_factory=dict, description="load options")


class ApiSettings(BaseModel):
    """The HTTP API (``stoker api``): where it listens and what it accepts."""

    model_config = {"extra": "forbid"}

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_body_bytes: int = Field(default=2_000_000, gt=0)  # JSON bodies
    max_upload_bytes: int = Field(default=2 * 2**30, gt=0)  # multipart file uploads
    max_batch_lines: int = Field(default=50_000, gt=0)
    # Queued chunk messages per capability beyond which submissions get 429.
    max_queue_depth: dict[str, int] = Field(default_factory=dict)
    default_max_queue_depth: int | None = Field(default=None, gt=0)
    retry_after_s: int = Field(default=5, gt=0)  # Retry-After of a 429
    sync_wait_s: float = Field(default=120.0, gt=0)  # sync OpenAI routes wait this long
    # Local paths a job's "path" param may name (nothing else on the API host is readable).
    path_roots: list[Path] = Field(default_factory=list)
    webhook_allow_hosts: list[str] = Field(default_factory=list)  # empty: any host
    webhook_max_attempts: int = Field(default=5, ge=1)
    webhook_backoff_s: float = Field(default=2.0, gt=0)  # doubles after each failure
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    poll_s: float = Field(default=0.5, gt=0)  # webhook watcher and SSE polling period


def default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "stoker"


class Settings(BaseSettings):
    """Every knob of stoker, typed, with units in the names."""

    model_config = SettingsConfigDict(
        env_prefix="STOKER_", env_nested_delimiter="__", extra="forbid"
    )

    # --- where things live --------------------------------------------------------
    data_dir: Path = Field(default_factory=default_data_dir)
    broker_url: str = ""  # "" = embedded: sqla+sqlite:///<data_dir>/broker.sqlite
    state_url: str = ""  # "" = the broker's Redis, else sqlite:///<data_dir>/jobs.sqlite
    storage_url: str = ""  # "" = file://<data_dir>/outputs

    # --- S3 (any S3-compatible store: MinIO, Ceph, AWS) ----------------------------
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    presign_expiry_s: int = Field(default=3600, gt=0)

    # --- queueing -------------------------------------------------------------------
    # Longer than any one chunk may run; a Redis message not acked by then is redelivered.
    visibility_timeout_s: int = Field(default=3600, gt=0)
    broker_polling_interval_s: float = Field(default=0.05, gt=0)
    task_max_retries: int = Field(default=5, ge=0)
    retry_backoff_s: float = Field(default=2.0, gt=0)
    retry_backoff_max_s: float = Field(default=300.0, gt=0)
    default_priority: Priority = "normal"

    # How long one chunk may run, its model's load included: one still running then is
    # stopped at its next check (between sentences, segments, diffusion steps, prompts)
    # and its job fails saying so. One stuck inside a library call (no check comes) is
    # ended with its worker process 5 % later, at least 10 s (`stoker worker` exits;
    # systemd or compose start it again: workers/watchdog.py). 0: no limit. Keep it
    # below visibility_timeout_s, past which Redis hands the chunk to a second worker
    # while the first still runs it.
    chunk_time_limit_s: float = Field(default=3000.0, ge=0)
    # A chunk whose workers died this many times while running it (killed, out of
    # memory, crashed in a library on a corrupt input) fails its job at its next
    # delivery, instead of taking down one worker after another. 0: never. Batched
    # capabilities (embed) are not counted. A run still going on another worker counts
    # too, which only happens past visibility_timeout_s: keep chunk_time_limit_s below it.
    chunk_max_crashes: int = Field(default=2, ge=0)
    # A worker told to stop (SIGTERM: a deploy, `systemctl stop`) lets its running
    # chunk finish for this long; past it, the chunk stops at its next check and goes
    # back to its queue at once, for another worker (its finished work is lost, not the
    # job). Keep it below the time the service manager waits before SIGKILL (systemd's
    # TimeoutStopSec, compose's stop_grace_period: 300 s in deploy/): a chunk killed
    # there waits visibility_timeout_s for Redis to hand it out again, and counts as a
    # crash. 0: put the chunk back at its next check.
    stop_grace_s: float = Field(default=240.0, ge=0)

    # --- input limits ---------------------------------------------------------------
    max_text_bytes: int = Field(default=1_000_000, gt=0)
    # Workers keep recent inputs (recordings) on local disk, so the chunks of one
    # long file download it once.
    input_cache_bytes: ByteSize = Field(default=ByteSize(10 * 2**30))
    speak_chunk_chars: int = Field(default=4000, ge=200)
    # Audio per transcription chunk: long files become many short tasks, each far
    # inside the visibility timeout. Boundaries move to the nearest pause.
    transcribe_chunk_s: float = Field(default=600.0, ge=5.0)
    # Batchable capabilities (embed): a worker buffers up to this many chunks, of any
    # jobs, or waits at most batch_wait_s for more, then runs them in one model call.
    # 256 rather than 64: sentence-transformers sorts a call's texts by length, so a
    # bigger call pads less (10,000 one-sentence jobs: 0.66x of plain batch-64, 0.56x at 64).
    batch_max_chunks: int = Field(default=256, ge=1, le=1024)
    batch_wait_s: float = Field(default=0.05, ge=0)

    # --- models and memory ------------------------------------------------------------
    models: dict[str, ModelEntry] = Field(default_factory=dict)
    default_voice: str = "en_US-joe-medium"
    default_embed_model: str = "all-MiniLM-L6-v2"
    # Per pool ("cpu", "cuda:0", ...). A pool with no entry gets a share of its memory.
    budgets: dict[str, ByteSize] = Field(default_factory=dict)
    keep_alive_s: float | None = Field(default=None, gt=0)  # None: never unload idle models
    pinned_models: list[str] = Field(default_factory=list)
    # Which queues a worker consumes (workers/scheduler.py): "backlog" keeps taking the
    # work of the model it holds while there is some, then switches deliberately;
    # "fifo" consumes every queue at once (a plain Celery worker). Redis broker only;
    # the embedded broker always runs "fifo".
    scheduling: Literal["backlog", "fifo"] = "backlog"
    scheduler_interval_s: float = Field(default=0.5, gt=0)  # how often backlog is read
    # A queue whose oldest message waited this long is served even if it forces a switch.
    scheduler_max_wait_s: float = Field(default=300.0, gt=0)
    # A worker joins a model queue another worker already serves only when at least
    # this many messages wait per serving worker (a load costs more than a short wait).
    scheduler_share_backlog: int = Field(default=32, ge=1)
    # A job whose model is a path that no live worker has is failed (saying which file
    # is missing where) once its queue's oldest message waited this long; a worker
    # with the file that starts within it takes the work instead.
    scheduler_orphan_wait_s: float = Field(default=60.0, gt=0)
    # How often a worker publishes its heartbeat (on a thread of its own, so a long
    # chunk does not silence it); one not renewed for 5 beats counts as gone.
    heartbeat_s: float = Field(default=2.0, gt=0)

    log_level: str = "INFO"
    api: ApiSettings = Field(default_factory=ApiSettings)

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser()
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.data_dir / 'broker.sqlite'}"
        if not self.state_url:
            self.state_url = (
                self.broker_url
                if self.broker_url.startswith(("redis://", "rediss://"))
                else f"sqlite:///{self.data_dir / 'jobs.sqlite'}"
            )
        if not self.storage_url:
            self.storage_url = f"file://{self.data_dir / 'outputs'}"
        elif not urlsplit(self.storage_url).scheme:  # a folder: as file://, absolute
            self.storage_url = Path(self.storage_url).expanduser().resolve().as_uri()
        if self.retry_backoff_max_s < self.retry_backoff_s:
            raise ValueError("retry_backoff_max_s must be at least retry_backoff_s")
        return self

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("sqla+")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _CONFIG_FILE.get()
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def _find_config_file(explicit: Path | None) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} does not exist; check --config.")
        return explicit
    from_env = os.environ.get("STOKER_CONFIG")
    if from_env:
        path = Path(from_env).expanduser()
        if not path.is_file():
            raise ConfigError(f"STOKER_CONFIG points to {path}, which does not exist.")
        return path
    default = Path.home() / ".config" / "stoker" / "stoker.toml"
    return default if default.is_file() else None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from overrides, ``STOKER_*`` variables and a TOML file.

    Raises :class:`ConfigError` with the offending setting named when they are invalid.
    """
    token = _CONFIG_FILE.set(_find_config_file(config_file))
    try:
        return Settings(**overrides)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError(f"invalid settings: {_first_problem(exc)}") from exc
    finally:
        _CONFIG_FILE.reset(token)


def _first_problem(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    return str(exc)
