"""stoker's Redis transport (queues/redis_transport.py) against a real redis-server:
kombu's transport with one client per channel instead of one per command."""

from __future__ import annotations

import pytest

from stoker.config import load_settings
from stoker.queues import redis_transport
from stoker.queues.app import kombu_url, make_celery

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_redis_urls_get_stokers_transport_and_others_keep_theirs() -> None:
    assert kombu_url("redis://h:6379/2") == "stokerredis://h:6379/2"
    assert kombu_url("rediss://h:6380/0") == "rediss://h:6380/0"  # TLS keys on the scheme
    assert kombu_url("sqla+sqlite:///x.db").startswith("stokersqla+sqlite")


def test_messages_round_trip_with_one_client_per_channel(clean_redis: str) -> None:
    # Given a Celery app on the session's Redis
    app = make_celery(load_settings(broker_url=clean_redis))
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        assert isinstance(channel, redis_transport.Channel)

        # When messages are published, received (recorded as unacked) and acked
        queue = conn.SimpleQueue("stoker-transport-test")
        for n in range(3):
            queue.put({"n": n})
        received = [queue.get(timeout=5) for _ in range(3)]
        first_client = channel._create_client()
        for message in received:
            message.ack()

        # Then every message arrived once, in order, with nothing left unacked
        assert [m.payload["n"] for m in received] == [0, 1, 2]
        assert channel._create_client() is first_client
        unacked = channel.client.hlen(channel.unacked_key)
        assert unacked == 0
        queue.close()

        # And a replaced pool (after a fork or a reset) gets a client of its own
        channel._disconnect_pools()
        assert channel._create_client() is not first_client
        assert channel._create_client().ping()
