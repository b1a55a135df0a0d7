"""The production broker's transport: kombu's Redis transport, one client per channel,
and acknowledgements that can be sent many in one round trip.

kombu's Redis channel makes a new ``redis.Redis`` object for every command it sends
outside its event loop: each received message (recording it as unacknowledged) and
each ack. The object shares the channel's connection pool, so nothing is connected,
but redis-py 6+ runs its event dispatch on every construction: about 0.25 ms per
job on our CI machine (py-spy on an embed worker draining one-sentence jobs), as much
as writing the job's two output files. A ``redis.Redis`` over a pool is thread-safe,
so each channel keeps one and makes it again only when kombu replaces the pool
(after a fork or a connection reset).

kombu acknowledges a message with one pipeline (drop it from the unacknowledged
index and hash): a round trip per message, ~0.2 ms of the consumer's time each on CI's
machine, which a batch of 256 one-sentence embed jobs pays 256 times while the model
wants the same cores. :func:`acks_together` collects the acknowledgements of a batch
and sends them as one pipeline; Celery's own bookkeeping (message and request state)
is unchanged.

Registered under its own alias for ``redis://`` URLs (kombu_url in queues/app.py);
``rediss://`` stays on kombu's own transport, whose TLS set-up keys on the scheme.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from queue import Empty
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.transport.redis import Channel as RedisChannel
from kombu.transport.redis import QoS as RedisQoS
from kombu.transport.redis import Transport as RedisTransport
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)
ALIAS = "stokerredis"


class QoS(RedisQoS):
    """kombu's Redis QoS; inside :meth:`acks_together`, acks are sent as one pipeline;
    messages that :meth:`record_many` recorded as unacknowledged are not sent again."""

    _deferred: list[str] | None = None
    _recorded: set[str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recorded = set()

    def record_many(self, payloads: list[dict[str, Any]]) -> None:
        """Record messages as unacknowledged in one round trip, as :meth:`append`
        records one: the same index entry and hash value, so restoring them after a
        crash or at shutdown is kombu's own code."""
        now = time.time()
        with self.pipe_or_acquire() as pipe:
            for payload in payloads:
                props = payload["properties"]
                info = props["delivery_info"]
                tag = props["delivery_tag"]
                pipe.zadd(self.unacked_index_key, {tag: now})
                pipe.hset(
                    self.unacked_key, tag, dumps([payload, info["exchange"], info["routing_key"]])
                )
            pipe.execute()
        self._recorded.update(p["properties"]["delivery_tag"] for p in payloads)

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self._recorded:
            self._recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)  # in memory only
        else:
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        if self._deferred is None:
            super().ack(delivery_tag)
        else:
            self._deferred.append(delivery_tag)

    @contextmanager
    def acks_together(self) -> Iterator[None]:
        """Acknowledge the messages acked in this block in one round trip at its end.

        If that round trip fails, the messages stay unacknowledged in Redis and are
        redelivered (after the visibility timeout, or when this worker stops), as a
        failed single ack would leave them: a redelivered chunk finds its output.
        """
        if self._deferred is not None:  # nested: the outer block sends them
            yield
            return
        self._deferred = []
        try:
            yield
        finally:
            tags, self._deferred = self._deferred, None
            if tags:
                self._ack_many(tags)

    def _ack_many(self, tags: list[str]) -> None:
        try:
            with self.pipe_or_acquire() as pipe:
                pipe.zrem(self.unacked_index_key, *tags).hdel(self.unacked_key, *tags).execute()
        except self.channel.connection.connection_errors as exc:
            log.warning(
                "could not acknowledge %d messages (%s); they will be redelivered", len(tags), exc
            )
            return
        for tag in tags:
            virtual.QoS.ack(self, tag)  # kombu's in-memory state only


def acks_together(messages: Sequence[Any]) -> AbstractContextManager[None]:
    """A block in which the acks of ``messages`` (kombu messages of one channel) are
    sent together; on a transport without that (SQLite), a block that changes nothing."""
    channel = getattr(messages[0], "channel", None) if messages else None
    together = getattr(getattr(channel, "qos", None), "acks_together", None)
    return together() if together is not None else nullcontext()


class Channel(RedisChannel):
    """kombu's Redis channel with one sync client, and bulk receiving.

    ``take_more``, when the consumer sets it, says for the queue a message was just
    popped from how many more it wants now (a worker forming a batch: queues/
    batching.py). They are popped from the same list with one ``RPOP key count`` and
    recorded as unacknowledged with the first in one pipeline, before any of them is
    delivered: three round trips for up to a batch of messages, where kombu makes two
    per message. The window in which a popped message is not yet recorded (a crash
    there loses it) is the one kombu has for every message. Taken from the list the
    first came from, they are of the same priority.
    """

    QoS = QoS
    take_more: Callable[[str], int] | None = None
    _sync_client: Any = None
    _sync_client_pool: Any = None

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's _brpop_read (kombu is pinned to 5.7), with the bulk step added.
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # As kombu: disconnect, so the next iteration reconnects.
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            key, item = dest__item
            key = bytes_to_str(key)
            queue = key.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            payloads = [loads(bytes_to_str(item))]
            wanted = self.take_more(queue) if self.take_more is not None else 0
            if wanted > 0:
                more = self._pop(key, wanted)
                if more:  # else the one message is recorded on delivery, as by kombu
                    payloads += more
                    self.qos.record_many(payloads)
            for n, payload in enumerate(payloads):
                try:
                    self.connection._deliver(payload, queue)
                except BaseException:
                    self._put_back(payloads[n + 1 :])
                    raise
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu's "no BRPOP out"
            self._flush_brpop_reauth()

    def _put_back(self, payloads: list[dict[str, Any]]) -> None:
        """Return recorded, undelivered messages to the front of their queue (a
        delivery raised: they would otherwise wait for the visibility timeout)."""
        for payload in reversed(payloads):  # each goes to the front: the last first
            tag = payload["properties"]["delivery_tag"]
            if tag in self.qos._recorded:
                self.qos._recorded.discard(tag)
                self.qos.restore_by_tag(tag)

    def _pop(self, key: str, count: int) -> list[dict[str, Any]]:
        """Up to ``count`` messages from the list ``key``, without waiting."""
        with self.conn_or_acquire() as client:
            raw = client.rpop(key, count) or []
        return [loads(bytes_to_str(item)) for item in raw]

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        if self._sync_client is None or self._sync_client_pool is not pool:
            self._sync_client = super()._create_client()
            self._sync_client_pool = pool
        return self._sync_client


class Transport(RedisTransport):
    Channel = Channel


def register() -> None:
    TRANSPORT_ALIASES.setdefault(ALIAS, f"{__name__}:Transport")
