"""The API's records in Redis, beside the job store (see meta.py).

Key layout (``p`` is the prefix, "stoker:api")::

    p:{ns}:{id}               hash: owner, created_at, data (JSON)
    p:{ns}:idx:all            sorted set of ids scored by created_at
    p:{ns}:idx:owner:{owner}  the same, per owner
    p:claim:{name}            a claim (SET NX with an expiry)
"""

from __future__ import annotations

import builtins
import json
from typing import Any

import redis

from stoker.api.meta import Doc
from stoker.errors import BrokerUnavailable

# KEYS: doc, idx:all, idx:owner.  ARGV: id, created_at, owner, data, only_new ('1'/'0')
_PUT = """
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'created_at', ARGV[2], 'data', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
"""


class RedisMetaStore:
    def __init__(self, url: str, *, prefix: str) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=10)
        self._prefix = prefix
        self._put_script = self._redis.register_script(_PUT)

    def _key(self, ns: str, *parts: str) -> str:
        return ":".join((self._prefix, ns, *parts))

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise BrokerUnavailable(
                f"the API store in Redis is unreachable ({exc}); retry later."
            ) from exc

    def _write(self, doc: Doc, only_new: bool) -> bool:
        keys = [
            self._key(doc.ns, doc.id),
            self._key(doc.ns, "idx", "all"),
            self._key(doc.ns, "idx", "owner", doc.owner),
        ]
        args = [doc.id, repr(doc.created_at), doc.owner, json.dumps(doc.data), int(only_new)]
        return bool(self._call(self._put_script, keys=keys, args=args))

    def put(self, doc: Doc) -> None:
        self._write(doc, only_new=False)

    def insert_new(self, doc: Doc) -> bool:
        return self._write(doc, only_new=True)

    def get(self, ns: str, id: str) -> Doc | None:
        fields = self._call(self._redis.hgetall, self._key(ns, id))
        if not fields:
            return None
        return Doc(
            ns,
            id,
            fields[b"owner"].decode(),
            float(fields[b"created_at"]),
            json.loads(fields[b"data"]),
        )

    def delete(self, ns: str, id: str) -> None:
        doc = self.get(ns, id)
        if doc is None:
            return
        pipe = self._redis.pipeline()
        pipe.delete(self._key(ns, id))
        pipe.zrem(self._key(ns, "idx", "all"), id)
        pipe.zrem(self._key(ns, "idx", "owner", doc.owner), id)
        self._call(pipe.execute)

    def list(
        self, ns: str, owner: str | None, limit: int, before: float | None = None
    ) -> builtins.list[Doc]:
        scope = ("all",) if owner is None else ("owner", owner)
        index = self._key(ns, "idx", *scope)
        top = f"({before!r}" if before is not None else "+inf"
        ids = self._call(self._redis.zrevrangebyscore, index, top, "-inf", start=0, num=limit)
        docs = [self.get(ns, i.decode()) for i in ids]
        return [d for d in docs if d is not None]

    def claim(self, name: str, ttl_s: float) -> bool:
        key = self._key("claim", name)
        ttl_ms = max(1, int(ttl_s * 1000))
        return bool(self._call(self._redis.set, key, b"1", nx=True, px=ttl_ms))

    def close(self) -> None:
        self._redis.close()
