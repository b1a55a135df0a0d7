"""stoker's Redis transport (queues/redis_transport.py) against a real redis-server:
kombu's transport with one client per channel instead of one per command."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

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


def test_acks_in_one_block_reach_redis_together_at_its_end(clean_redis: str) -> None:
    # Given three messages received on stoker's transport (recorded as unacked)
    app = make_celery(load_settings(broker_url=clean_redis))
    with app.connection_for_write() as conn:
        queue = conn.SimpleQueue("stoker-transport-acks")
        for n in range(3):
            queue.put({"n": n})
        received = [queue.get(timeout=5) for _ in range(3)]
        channel = received[0].channel
        assert channel.client.hlen(channel.unacked_key) == 3

        # When they are acked inside one block (with a nested block, as a batch's
        # settle may be inside another)
        with redis_transport.acks_together(received):
            with redis_transport.acks_together(received[:1]):
                received[0].ack()
            for message in received[1:]:
                message.ack()
            # Then nothing has been sent yet: a crash here redelivers all three
            assert channel.client.hlen(channel.unacked_key) == 3
            assert all(m.acknowledged for m in received)  # kombu's own state as usual

        # And at the block's end all three left Redis and kombu's in-memory state
        assert channel.client.hlen(channel.unacked_key) == 0
        assert channel.client.zcard(channel.unacked_index_key) == 0
        assert len(channel.qos._delivered) - len(channel.qos._dirty) == 0
        queue.close()


def test_acks_together_is_a_plain_block_on_other_transports() -> None:
    # Given a message of a channel whose QoS cannot send acks together (the SQLite
    # broker's; its real path runs in the embedded-default embed tests)
    message = SimpleNamespace(channel=SimpleNamespace(qos=object()), acked=False)
    # When it is acked in a block, Then it is acked at once, as without one
    with redis_transport.acks_together([message]):
        message.acked = True
    assert message.acked
    with redis_transport.acks_together([]):  # an empty batch needs no channel
        pass


def _bulk_consumer(conn: Any, name: str, wanted: int, seen: list[Any], fail_at: int = -1) -> Any:
    """A kombu consumer of queue ``name`` on stoker's transport whose channel is told
    to take ``wanted`` more messages after each one popped (as a forming batch does)."""
    from kombu import Consumer, Queue

    channel = conn.channel()
    channel.take_more = lambda queue: wanted if queue == name else 0

    def on_message(message: Any) -> None:
        if len(seen) == fail_at:
            raise RuntimeError("delivery failed")
        seen.append(message)

    return Consumer(channel, [Queue(name, routing_key=name)], callbacks=[], on_message=on_message)


def test_a_forming_batch_takes_many_messages_in_one_read_all_recorded_as_unacked(
    clean_redis: str,
) -> None:
    app = make_celery(load_settings(broker_url=clean_redis))
    with app.connection_for_write() as conn:
        # Given 7 messages queued, and a consumer that wants 4 more after each
        producer = conn.SimpleQueue("stoker-bulk")
        for n in range(7):
            producer.put({"n": n})
        seen: list[Any] = []
        with _bulk_consumer(conn, "stoker-bulk", 4, seen) as consumer:
            channel = consumer.channel
            # When the connection reads once
            conn.drain_events(timeout=5)
            # Then five messages arrived, in queue order, each recorded as unacked
            assert [m.payload["n"] for m in seen] == [0, 1, 2, 3, 4]
            assert channel.client.hlen(channel.unacked_key) == 5
            assert channel.client.llen("stoker-bulk") == 2
            # And acking them (together) leaves nothing unacked
            with redis_transport.acks_together(seen):
                for message in seen:
                    message.ack()
            assert channel.client.hlen(channel.unacked_key) == 0
            conn.drain_events(timeout=5)  # the rest: 5 and 6
            assert [m.payload["n"] for m in seen[5:]] == [5, 6]
            # And unacked messages are restored as kombu restores its own (a worker's
            # shutdown): back on the queue, nothing left unacked
            channel.qos.restore_unacked()
            assert channel.client.llen("stoker-bulk") == 2
            assert channel.client.hlen(channel.unacked_key) == 0
        producer.close()


def test_messages_taken_together_that_could_not_be_delivered_go_back_first(
    clean_redis: str,
) -> None:
    app = make_celery(load_settings(broker_url=clean_redis))
    with app.connection_for_write() as conn:
        producer = conn.SimpleQueue("stoker-bulk")
        for n in range(6):
            producer.put({"n": n})
        seen: list[Any] = []
        # Given a consumer taking 4 more per read whose third delivery raises
        with _bulk_consumer(conn, "stoker-bulk", 4, seen, fail_at=2) as consumer:
            channel = consumer.channel
            with pytest.raises(RuntimeError, match="delivery failed"):
                conn.drain_events(timeout=5)
            # Then the two delivered are unacked, the failed one stays unacked (as
            # kombu leaves a message whose callback raised), and the two after it
            # are back at the front of the queue, ahead of the one never taken
            assert [m.payload["n"] for m in seen] == [0, 1]
            assert channel.client.hlen(channel.unacked_key) == 3
            assert channel.qos._recorded == set()
            assert channel.client.llen("stoker-bulk") == 3
            seen_after: list[Any] = []
        with _bulk_consumer(conn, "stoker-bulk", 0, seen_after) as again:
            for _ in range(3):
                conn.drain_events(timeout=5)
            assert [m.payload["n"] for m in seen_after] == [3, 4, 5]
            assert all(m.delivery_info.get("redelivered") for m in seen_after[:2])
            assert again.channel.qos._recorded == set()
        producer.close()
