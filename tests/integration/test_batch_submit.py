"""A batch's children are recorded and queued in groups (queues/batches.py, GROUP):
``Stoker.submit_batch`` against a real Redis as broker and job store, and against a
broker that is down."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import redis

from stoker.client import Stoker
from stoker.config import Settings
from stoker.errors import BrokerUnavailable, StorageUnavailable
from stoker.queues.batches import GROUP, children
from stoker.queues.records import JobFilter, JobState
from tests.servers import free_port, redis_server

pytestmark = pytest.mark.integration


def queued_job_ids(url: str) -> list[str]:
    """The job id of every chunk message waiting in any queue of the broker at ``url``."""
    client = redis.Redis.from_url(url)
    try:
        found = []
        for key in client.scan_iter():
            if client.type(key) != b"list":
                continue
            for raw in client.lrange(key, 0, -1):
                message = json.loads(raw)
                args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
                found.append(args[0])
        return found
    finally:
        client.close()


def test_a_batch_over_a_group_records_and_queues_every_child_once(
    clean_redis: str, tmp_path: Path
) -> None:
    # Given a batch of one group and a few lines more, one of them refused (empty)
    n = GROUP + 3
    requests = [{"text": f"sentence {i}"} for i in range(n)]
    requests[GROUP - 1] = {"text": ""}
    settings = Settings(data_dir=tmp_path, broker_url=clean_redis)

    # When it is submitted
    with Stoker(settings) as stoker:
        batch = stoker.submit_batch("embed", requests, source="lines.txt")
        kids = children(stoker.store, batch.id)
        counts = stoker.store.child_counts(batch.id)

    # Then every line is a child in its place; the empty one failed with its reason
    assert [k.parent_index for k in kids] == list(range(n))
    refused = kids[GROUP - 1]
    assert refused.state is JobState.FAILED and refused.error is not None
    assert refused.error.kind == "invalid_input" and "empty" in refused.error.message
    assert counts == {JobState.QUEUED: n - 1, JobState.FAILED: 1}
    # And each of the others has exactly one chunk message waiting on the broker
    queued = [k.id for k in kids if k.state is JobState.QUEUED]
    assert sorted(queued_job_ids(clean_redis)) == sorted(queued)


def test_a_broker_down_fails_a_batchs_lines_clearly_and_a_retry_queues_them(
    tmp_path: Path,
) -> None:
    # Given a broker nobody listens on (the job store is local and up)
    port = free_port()
    dead = f"redis://127.0.0.1:{port}/0"
    settings = Settings(
        data_dir=tmp_path, broker_url=dead, state_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    )
    n = GROUP + 2  # two groups, each refused by the broker
    with Stoker(settings) as stoker:
        # When a batch of that many lines is submitted
        requests = [{"text": f"sentence {i}"} for i in range(n)]
        with pytest.raises(BrokerUnavailable, match="broker is unreachable") as caught:
            stoker.submit_batch("embed", requests, source="lines.txt")
        # Then the error names what to check and what to do after
        assert "STOKER_BROKER_URL" in str(caught.value)
        assert "`stoker retry --failed`" in str(caught.value)
        # And every line is recorded as failed with it, in both groups, and the batch
        # ended (it does not wait for lines nobody will run)
        (batch,) = stoker.jobs(JobFilter(top_level=True))
        kids = children(stoker.store, batch.id)
        assert [k.parent_index for k in kids] == list(range(n))
        assert all(k.state is JobState.FAILED for k in kids)
        assert all(k.error and "broker is unreachable" in k.error.message for k in kids)
        assert stoker.status(batch.id).state is JobState.SUCCEEDED
        assert len(stoker.item_errors(batch.id)) == n

    # When the broker is up again and the failed jobs are retried, as the error says
    with redis_server(tmp_path / "redis", port=port) as url, Stoker(settings) as stoker:
        (retried,) = stoker.retry_failed()
        # Then the batch is running again with every line queued, one message each
        assert (retried.record.id, sorted(retried.jobs)) == (batch.id, sorted(k.id for k in kids))
        assert not retried.record.state.terminal
        assert sorted(queued_job_ids(url)) == sorted(k.id for k in kids)
        assert stoker.child_counts(batch.id) == {JobState.QUEUED: n}


def test_a_batch_whose_setup_fails_ends_failed_with_nothing_queued(
    clean_redis: str, tmp_path: Path
) -> None:
    # Given a batch whose first step after its record fails (storage went away)
    settings = Settings(data_dir=tmp_path, broker_url=clean_redis)

    def storage_gone(batch: object) -> None:
        raise StorageUnavailable("storage is unreachable (connection refused)")

    with Stoker(settings) as stoker:
        # When it is submitted, the caller gets the error
        with pytest.raises(StorageUnavailable):
            stoker.submit_batch("embed", [{"text": "a"}], source="lines.txt", created=storage_gone)
        # Then the batch ended failed, saying why, with no job queued that it would wait for
        [batch] = stoker.jobs(JobFilter(kind="batch"))
        assert batch.state is JobState.FAILED and batch.error is not None
        assert batch.error.message.startswith("not submitted: storage is unreachable")
        assert children(stoker.store, batch.id) == []
    assert queued_job_ids(clean_redis) == []
