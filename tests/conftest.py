"""Fixtures shared by every test: isolated settings and real servers on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deployment import Deployment
from tests.piper_voices import VoiceFiles, write_two_speaker_voice
from tests.servers import moto_s3_server, redis_server

# Models load from local paths only; a hub lookup must fail loudly, never hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Credentials for the moto server (it does not check them, boto3 needs some).
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# pytest-xdist's workers set COLUMNS=80 and LINES=24 (a terminal's); the CLI run in
# subprocesses must see what a pipe is, as in a run without -n: tables PIPED_WIDTH wide.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server of this test session's own (not the shared one on 6379)."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture()
def clean_redis(redis_url: str) -> Iterator[str]:
    """The session's Redis, emptied before the test."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    yield redis_url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-protocol server process (moto_server) on loopback."""
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture()
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the S3 server."""
    import boto3

    name = f"stoker-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def two_speaker_voice(tmp_path_factory: pytest.TempPathFactory) -> VoiceFiles:
    """A two-speaker Piper voice made from joe (tests/piper_voices.py), built once."""
    return write_two_speaker_voice(tmp_path_factory.mktemp("voices"))


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "stoker-data"
    d.mkdir()
    return d


@pytest.fixture()
def deployment(
    clean_redis: str, s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> Iterator[Deployment]:
    """Production shape: Celery on Redis, records in Redis, outputs in S3; no workers yet.

    The visibility timeout is short so a killed worker's chunk is redelivered in seconds.
    """
    dep = Deployment(
        env={
            "STOKER_DATA_DIR": str(tmp_path / "data"),
            "STOKER_BROKER_URL": clean_redis,
            "STOKER_STORAGE_URL": f"s3://{s3_bucket}/stoker",
            "STOKER_S3_ENDPOINT_URL": s3_endpoint,
            "STOKER_VISIBILITY_TIMEOUT_S": "5",
            "STOKER_SPEAK_CHUNK_CHARS": "200",
            "STOKER_RETRY_BACKOFF_S": "0.2",
        },
        workdir=tmp_path,
    )
    try:
        yield dep
    finally:
        dep.stop_all()
