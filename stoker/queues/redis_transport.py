"""The production broker's transport: kombu's Redis transport, one client per channel.

kombu's Redis channel makes a new ``redis.Redis`` object for every command it sends
outside its event loop: each received message (recording it as unacknowledged) and
each ack. The object shares the channel's connection pool, so nothing is connected,
but redis-py 6+ runs its event dispatch on every construction: about 0.25 ms per
job on our CI machine (py-spy on an embed worker draining one-sentence jobs), as much
as writing the job's two output files. A ``redis.Redis`` over a pool is thread-safe,
so each channel keeps one and makes it again only when kombu replaces the pool
(after a fork or a connection reset).

Registered under its own alias for ``redis://`` URLs (kombu_url in queues/app.py);
``rediss://`` stays on kombu's own transport, whose TLS set-up keys on the scheme.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.redis import Channel as RedisChannel
from kombu.transport.redis import Transport as RedisTransport

ALIAS = "stokerredis"


class Channel(RedisChannel):
    _sync_client: Any = None
    _sync_client_pool: Any = None

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
