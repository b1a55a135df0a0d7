"""Job store in Redis, for clients and workers on several machines.

Key layout (``p`` is the prefix, "stoker" by default)::

    p:job:{id}            hash: doc (immutable JSON), state, stage, total, attempts,
                          created_at, started_at, finished_at, error (JSON); a field is
                          absent while its value is None. runs:{index}: chunk index's
                          runs that started and have not ended (the crash count)
    p:job:{id}:outputs    list of OutputRef JSON, in order
    p:job:{id}:done       set of finished chunk indexes
    p:job:{id}:payloads   JSON list of the chunks' task payloads, kept until the job
                          succeeds, for `stoker retry` of a failed or cancelled job
    p:idx:all             sorted set of job ids scored by created_at; likewise
    p:idx:state:{state}   p:idx:kind:{kind}, p:idx:owner:{owner}, for the child
                          jobs of a batch p:idx:parent:{batch id}, and for the jobs
                          that are not a batch's child p:idx:top (built once from the
                          others in a store made before it existed; p:idx:top:built
                          marks that)
    p:counts              hash "{kind}|{state}" → jobs, moved by the same scripts as
                          the state index sets; its field "ready" is set once it was
                          counted from the indexes (a store made before counts existed)

Every change is one Lua script, so a state change and the move of the id between the
state index sets happen together, and a change never lands on a job that does not exist.
"""

from __future__ import annotations

import builtins
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from stoker.errors import BrokerUnavailable, ConfigError, JobNotFound
from stoker.queues.records import JobError, JobFilter, JobRecord, JobState, OutputRef
from stoker.queues.stores.base import (
    DocCache,
    Tally,
    assemble_record,
    initial_total,
    payload_rows,
    record_doc,
    safe_url,
)

# Lua shared by the scripts that change a state: the job's kind (a hash field; jobs
# stored before it existed have it only in their doc), and moving a count.
_COUNT = """
local function kind_of(job)
  return redis.call('HGET', job, 'kind') or cjson.decode(redis.call('HGET', job, 'doc')).kind
end
local function move(counts, kind, from, to)
  redis.call('HINCRBY', counts, kind .. '|' .. from, -1)
  redis.call('HINCRBY', counts, kind .. '|' .. to, 1)
end
"""

# KEYS: job, outputs, counts, idx:all, idx:state, idx:kind, idx:owner, idx:parent or top
# ARGV: id, created_at, "{kind}|{state}", n, n hash field/value items, outputs...
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], unpack(ARGV, 5, 4 + n))
if #ARGV > 4 + n then redis.call('RPUSH', KEYS[2], unpack(ARGV, 5 + n)) end
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
for i = 4, #KEYS do redis.call('ZADD', KEYS[i], ARGV[2], ARGV[1]) end
return 1
"""

# Fills idx:top, once, for a store made before it existed: idx:all less every batch's
# children. Atomic, so a job created or deleted meanwhile is not missed or brought back.
# KEYS: idx:top, idx:all, idx:top:built, a temporary key.  ARGV: the idx:parent: prefix
_BUILD_TOP = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('DEL', KEYS[4])
local cursor = '0'
repeat
  local reply = redis.call('SCAN', cursor, 'MATCH', ARGV[1] .. '*', 'COUNT', 500)
  cursor = reply[1]
  local keys = reply[2]
  for first = 1, #keys, 500 do  -- a bounded unpack, whatever SCAN returned
    local last = math.min(first + 499, #keys)
    redis.call('ZUNIONSTORE', KEYS[4], last - first + 2, KEYS[4], unpack(keys, first, last))
  end
until cursor == '0'
redis.call('ZDIFFSTORE', KEYS[4], 2, KEYS[2], KEYS[4])
redis.call('ZUNIONSTORE', KEYS[1], 2, KEYS[1], KEYS[4], 'AGGREGATE', 'MAX')
redis.call('DEL', KEYS[4])
redis.call('SET', KEYS[3], 1)
return 1
"""

# KEYS: job, idx:state:queued, idx:state:running, counts.  ARGV: id, now
_MARK_RUNNING = (
    _COUNT
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state == 'queued' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], redis.call('HGET', KEYS[1], 'created_at'), ARGV[1])
  redis.call('HSET', KEYS[1], 'state', 'running', 'started_at', ARGV[2])
  move(KEYS[4], kind_of(KEYS[1]), 'queued', 'running')
  state = 'running'
end
if state == 'running' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
return state
"""
)

# KEYS: job, outputs, idx:state:queued, idx:state:running, idx:state:{target}, counts,
# payloads.  ARGV: id, target, replace_outputs ('1'/'0'), n, n field/value items,
# outputs...  Returns 1 if moved, 0 if the job is terminal, -1 if it does not exist.
# A job that succeeded is never retried: its chunk payloads go.
_FINISH = (
    _COUNT
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if state ~= 'queued' and state ~= 'running' then return 0 end
move(KEYS[6], kind_of(KEYS[1]), state, ARGV[2])
redis.call('ZREM', state == 'queued' and KEYS[3] or KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[5], redis.call('HGET', KEYS[1], 'created_at'), ARGV[1])
local n = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'state', ARGV[2], unpack(ARGV, 5, 4 + n))
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[2])
  if #ARGV > 4 + n then redis.call('RPUSH', KEYS[2], unpack(ARGV, 5 + n)) end
end
if ARGV[2] == 'succeeded' then redis.call('DEL', KEYS[7]) end
return 1
"""
)

# KEYS: job, done.  ARGV: index.  Returns {newly added, done, total, state} or nil.
_CHUNK_DONE = """
local job = redis.call('HMGET', KEYS[1], 'state', 'total')
if not job[1] then return false end
local added = redis.call('SADD', KEYS[2], ARGV[1])
return {added, redis.call('SCARD', KEYS[2]), tonumber(job[2]), job[1]}
"""

# Counts every (kind, state) from the index sets, once, for a store made before counts
# existed: atomic, so no change lands between the count and the "ready" mark.
# KEYS: counts.  ARGV: the idx:kind: key prefix, the idx:state: key prefix, states...
_COUNT_ALL = """
if redis.call('HEXISTS', KEYS[1], 'ready') == 1 then return 0 end
redis.call('DEL', KEYS[1])
local cursor = '0'
repeat
  local reply = redis.call('SCAN', cursor, 'MATCH', ARGV[1] .. '*', 'COUNT', 1000)
  cursor = reply[1]
  for _, key in ipairs(reply[2]) do
    local kind = string.sub(key, #ARGV[1] + 1)
    for i = 3, #ARGV do
      local n = redis.call('ZINTERCARD', 2, key, ARGV[2] .. ARGV[i])
      if n > 0 then redis.call('HSET', KEYS[1], kind .. '|' .. ARGV[i], n) end
    end
  end
until cursor == '0'
redis.call('HSET', KEYS[1], 'ready', 1)
return 1
"""

# KEYS: job, outputs, done, payloads, counts, idx:all, idx:state:{state}, idx:kind,
# idx:owner, idx:parent or idx:top.  ARGV: id, state, "{kind}|{state}".  Returns 1 if
# deleted, 0 if the job is not in ``state`` (it is active: only an ended job is
# deleted, and a retried one is active again), -1 if no job.
_DELETE = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if state ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('HINCRBY', KEYS[5], ARGV[3], -1)
for i = 6, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1
"""

# An ended job back to queued, for a retry (see JobStore.requeue).
# KEYS: job, outputs, done, idx:state:{state}, idx:state:queued, counts.
# ARGV: id, state (as read: the index key depends on it), stage, chunk indexes to
# count as not done...  Returns 1 if moved, 0 if the job is active (only the chunks
# were counted as not done), 2 if it ended in another state than read, -1 if no job.
_REQUEUE = (
    _COUNT
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if state == 'queued' or state == 'running' then
  if #ARGV > 3 then redis.call('SREM', KEYS[3], unpack(ARGV, 4)) end
  return 0
end
if state ~= ARGV[2] then return 2 end
move(KEYS[6], kind_of(KEYS[1]), state, 'queued')
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[5], redis.call('HGET', KEYS[1], 'created_at'), ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'queued', 'stage', ARGV[3])
redis.call('HDEL', KEYS[1], 'error', 'finished_at')
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 5) == 'runs:' then redis.call('HDEL', KEYS[1], field) end
end
redis.call('DEL', KEYS[2])
if #ARGV > 3 then redis.call('SREM', KEYS[3], unpack(ARGV, 4)) end
return 1
"""
)

# KEYS: job.  ARGV: chunk index, change.  The chunk's count of runs not ended, or
# false if the job does not exist (HINCRBY alone would make a hash for a deleted one).
_CHUNK_RUNS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('HINCRBY', KEYS[1], 'runs:' .. ARGV[1], ARGV[2])
"""

# KEYS: job, target.  ARGV: 'hset' field value | 'rpush' items...  Returns 0 if no job.
_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call(ARGV[1], KEYS[2], unpack(ARGV, 2))
return 1
"""


class RedisJobStore:
    """:class:`~stoker.queues.stores.base.JobStore` in the Redis at ``url``.

    Connects on first use. Raises BrokerUnavailable (retried by workers) when Redis
    cannot be reached within the socket timeouts, ConfigError for a malformed URL,
    and JobNotFound for a missing job.
    """

    def __init__(self, url: str, prefix: str = "stoker", *, timeout_s: float = 5.0) -> None:
        self.url, self.prefix = url, prefix
        try:
            self._client = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                # Ride over a blip, but report an outage within about a second: the
                # caller (a Celery task) retries with its own, longer backoff.
                retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2),
            )
        except ValueError as exc:
            raise ConfigError(
                f"state_url {safe_url(url)!r} is not a valid Redis URL: {exc}."
            ) from exc
        register = self._client.register_script
        self._create, self._mark_running = register(_CREATE), register(_MARK_RUNNING)
        self._finish_script, self._chunk_done = register(_FINISH), register(_CHUNK_DONE)
        self._if_exists, self._count_all = register(_IF_EXISTS), register(_COUNT_ALL)
        self._delete, self._build_top = register(_DELETE), register(_BUILD_TOP)
        self._chunk_runs, self._requeue = register(_CHUNK_RUNS), register(_REQUEUE)
        self._top_built = False  # idx:top seen complete by this client
        self._docs = DocCache()

    # --- reads ----------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        with self._guard():
            pipe = self._client.pipeline()  # MULTI/EXEC: one consistent snapshot
            self._queue_read(pipe, job_id)
            fields, done, outputs = pipe.execute()
        if not fields:
            raise JobNotFound(job_id)
        return _record(fields, done, outputs)

    def state(self, job_id: str) -> JobState:
        with self._guard():
            state = cast(str | None, self._client.hget(self._job(job_id), "state"))
        if state is None:
            raise JobNotFound(job_id)
        return JobState(state)

    def list(self, flt: JobFilter) -> builtins.list[JobRecord]:
        """Newest first (ties by id, descending), from the index sorted sets.

        One filter reads its sorted set; several are intersected server-side, which
        costs time in proportion to the smallest of them.
        """
        keys = self._index_keys(flt)
        if flt.top_level:
            self._ensure_top()
        high = "+inf" if flt.before is None else f"({flt.before!r}"  # "(": exclusive
        with self._guard():
            pipe = self._client.pipeline()
            if len(keys) == 1:
                pipe.zrevrangebyscore(keys[0], high, "-inf", start=0, num=flt.limit)
            else:
                # Inside MULTI/EXEC, so the temporary key never outlives this call.
                tmp = f"{self.prefix}:tmp:{uuid.uuid4().hex}"
                pipe.zinterstore(tmp, keys, aggregate="MAX")  # every score is created_at
                pipe.zrevrangebyscore(tmp, high, "-inf", start=0, num=flt.limit)
                pipe.delete(tmp)
            ids = pipe.execute()[0 if len(keys) == 1 else 1]
            for job_id in ids:
                self._queue_read(pipe, job_id)
            replies = pipe.execute() if ids else []
        triples = (replies[i : i + 3] for i in range(0, len(replies), 3))
        return [_record(*triple) for triple in triples if triple[0]]

    def counts(self) -> dict[tuple[str, str], int]:
        with self._guard():
            counts = cast(dict[str, str], self._client.hgetall(self._counts()))
            if "ready" not in counts:
                states = [s.value for s in JobState]
                prefixes = [self._idx("kind", ""), self._idx("state", "")]
                self._count_all([self._counts()], [*prefixes, *states])
                counts = cast(dict[str, str], self._client.hgetall(self._counts()))
        pairs = ((name.partition("|"), int(n)) for name, n in counts.items() if name != "ready")
        return {(kind, state): n for (kind, _, state), n in pairs if n > 0}

    def child_counts(self, parent_id: str) -> dict[JobState, int]:
        # ZINTERCARD walks the smaller set (the batch's) once per state: 6 ms for a
        # batch of 20,000 jobs, where reading their records took 1.9 s.
        parent = self._idx("parent", parent_id)
        with self._guard():
            pipe = self._client.pipeline(transaction=False)
            for state in JobState:
                pipe.zintercard(2, [parent, self._idx("state", state)])
            counts = pipe.execute()
        return {state: int(n) for state, n in zip(JobState, counts, strict=True) if n}

    def done_chunks(self, job_id: str) -> set[int]:
        with self._guard():
            pipe = self._client.pipeline()
            pipe.exists(self._job(job_id))
            pipe.smembers(self._done(job_id))
            exists, members = pipe.execute()
        if not exists:
            raise JobNotFound(job_id)
        return {int(m) for m in members}

    def chunks_all_done(self, job_id: str, indices: Sequence[int]) -> bool:
        with self._guard():
            pipe = self._client.pipeline(transaction=False)
            pipe.exists(self._job(job_id))
            if indices:  # SMISMEMBER (Redis 6.2+) needs at least one member
                pipe.smismember(self._done(job_id), [str(i) for i in indices])
            exists, *members = pipe.execute()
        if not exists:
            raise JobNotFound(job_id)
        return all(members[0]) if members else True

    # --- changes --------------------------------------------------------------------

    def create(self, record: JobRecord) -> None:
        with self._guard():
            created = self._create(*self._create_call(record))
        if not created:
            raise ValueError(f"a job with id {record.id!r} already exists")

    def create_many(
        self,
        records: Sequence[JobRecord],
        payloads: Sequence[Sequence[dict[str, Any]]] | None = None,
    ) -> None:
        # A pipeline checks its scripts are loaded first: two round trips, not one.
        pipe = self._client.pipeline(transaction=False)
        for record in records:
            self._create(*self._create_call(record), client=pipe)
        for job_id, kept in payload_rows(records, payloads):
            # NX: an id already taken keeps its own (the create above refuses it).
            pipe.set(self._payloads(job_id), kept, nx=True)
        with self._guard():
            created = pipe.execute()[: len(records)] if records else []
        taken = [r.id for r, ok in zip(records, created, strict=True) if not ok]
        if taken:
            raise ValueError(f"a job with id {taken[0]!r} already exists")

    def chunk_payloads(self, job_id: str) -> builtins.list[dict[str, Any]] | None:
        with self._guard():
            pipe = self._client.pipeline()
            pipe.exists(self._job(job_id))
            pipe.get(self._payloads(job_id))
            exists, kept = pipe.execute()
        if not exists:
            raise JobNotFound(job_id)
        return None if kept is None else cast(builtins.list[dict[str, Any]], json.loads(kept))

    def requeue(self, job_id: str, *, stage: str = "queued", undone: Sequence[int] = ()) -> bool:
        moved = 2
        while moved == 2:  # it ended in another state since it was read: read again
            with self._guard():
                state = cast(str | None, self._client.hget(self._job(job_id), "state"))
                if state is None:
                    raise JobNotFound(job_id)
                keys = [
                    self._job(job_id),
                    self._outputs(job_id),
                    self._done(job_id),
                    self._idx("state", state),
                    self._idx("state", "queued"),
                    self._counts(),
                ]
                moved = self._requeue(keys, [job_id, state, stage, *undone])
        if moved == -1:  # deleted by another client meanwhile
            raise JobNotFound(job_id)
        return bool(moved == 1)

    def mark_running(self, job_id: str) -> JobState:
        with self._guard():
            state = self._mark_running(*self._mark_running_call(job_id))
        if state is None:
            raise JobNotFound(job_id)
        return JobState(state)

    def set_stage(self, job_id: str, stage: str) -> None:
        self._if_job(job_id, "hset", self._job(job_id), ["stage", stage])

    def chunk_done(self, job_id: str, index: int) -> Tally:
        with self._guard():
            reply = self._chunk_done(*self._chunk_done_call(job_id, index))
        if reply is None:
            raise JobNotFound(job_id)
        return _tally(reply)

    def chunk_runs(self, job_id: str, index: int, change: int) -> int:
        with self._guard():
            count = self._chunk_runs([self._job(job_id)], [index, change])
        if count is None:
            raise JobNotFound(job_id)
        return int(count)

    def succeed(self, job_id: str, outputs: builtins.list[OutputRef]) -> bool:
        return self._finish(job_id, JobState.SUCCEEDED, {"stage": "done"}, outputs)

    def fail(self, job_id: str, error: JobError) -> bool:
        return self._finish(job_id, JobState.FAILED, {"error": error.model_dump_json()})

    def cancel(self, job_id: str) -> bool:
        return self._finish(job_id, JobState.CANCELLED, {"stage": "cancelled"})

    def start_many(self, job_ids: Sequence[str]) -> builtins.list[JobRecord | None]:
        pipe = self._client.pipeline(transaction=False)
        cached = [self._docs.get(job_id) for job_id in job_ids]
        for job_id, doc in zip(job_ids, cached, strict=True):
            self._mark_running(*self._mark_running_call(job_id), client=pipe)
            self._queue_read(pipe, job_id, with_doc=doc is None)
        with self._guard():
            replies = pipe.execute() if job_ids else []
        # Per job: the script's state, then the three reads of _queue_read.
        records = []
        for at, doc in zip(range(0, len(replies), 4), cached, strict=True):
            fields, done, outputs = replies[at + 1 : at + 4]
            if doc is not None:  # HMGET: every field, None where absent
                fields = {k: v for k, v in zip(_MUTABLE, fields, strict=True) if v is not None}
            record = _record(fields, done, outputs, doc) if fields else None
            if record is not None and doc is None:
                self._docs.keep(record)
            records.append(record)
        return records

    def chunk_done_many(self, chunks: Sequence[tuple[str, int]]) -> builtins.list[Tally | None]:
        pipe = self._client.pipeline(transaction=False)
        for job_id, index in chunks:
            self._chunk_done(*self._chunk_done_call(job_id, index), client=pipe)
        with self._guard():
            replies = pipe.execute() if chunks else []
        return [None if reply is None else _tally(reply) for reply in replies]

    def succeed_many(
        self, jobs: Sequence[tuple[str, builtins.list[OutputRef]]]
    ) -> builtins.list[bool]:
        pipe = self._client.pipeline(transaction=False)
        for job_id, outputs in jobs:
            call = self._finish_call(job_id, JobState.SUCCEEDED, {"stage": "done"}, outputs)
            self._finish_script(*call, client=pipe)
        with self._guard():
            replies = pipe.execute() if jobs else []
        return [reply == 1 for reply in replies]

    def add_outputs(self, job_id: str, outputs: builtins.list[OutputRef]) -> None:
        if outputs:
            self._if_job(job_id, "rpush", self._outputs(job_id), _outputs(outputs))
        else:
            self.state(job_id)  # raises JobNotFound for a missing job

    def delete(self, job_id: str) -> bool:
        # The index keys depend on the state, kind, owner and parent, so they are read
        # first; the script deletes only if the state is still the one read (an ended
        # job's state never changes, and an active one is refused either way).
        with self._guard():
            fields = self._client.hmget(self._job(job_id), ["state", "kind", "doc"])
        state, kind, doc = cast(list[str | None], fields)
        if state is None or doc is None:
            raise JobNotFound(job_id)
        if not JobState(state).terminal:
            return False
        doc_fields = json.loads(doc)  # its owner, parent and (stored before 'kind') kind
        kind = kind or doc_fields["kind"]
        keys = [
            self._job(job_id),
            self._outputs(job_id),
            self._done(job_id),
            self._payloads(job_id),
            self._counts(),
            self._idx("all"),
            self._idx("state", state),
            self._idx("kind", kind),
            self._idx("owner", doc_fields["owner"]),
        ]
        keys.append(self._level_idx(doc_fields.get("parent")))
        with self._guard():
            deleted = self._delete(keys, [job_id, state, f"{kind}|{state}"])
        self._docs.forget(job_id)
        if deleted == -1:  # deleted by another client meanwhile
            raise JobNotFound(job_id)
        return deleted == 1

    def close(self) -> None:
        self._client.close()

    # --- internals ------------------------------------------------------------------

    def _finish(
        self,
        job_id: str,
        target: JobState,
        fields: dict[str, Any],
        outputs: Sequence[OutputRef] | None = None,
    ) -> bool:
        """queued/running → ``target``; ``outputs``, if given, replace the job's."""
        with self._guard():
            moved = self._finish_script(*self._finish_call(job_id, target, fields, outputs))
        if moved == -1:
            raise JobNotFound(job_id)
        return bool(moved == 1)

    # Keys and arguments of each script, shared by the one-job and batched calls.

    def _create_call(self, record: JobRecord) -> tuple[builtins.list[str], builtins.list[Any]]:
        fields = {
            "doc": record_doc(record),
            "kind": record.kind,
            "state": record.state.value,
            "stage": record.progress.stage,
            "total": initial_total(record),
            "attempts": record.attempts,
            "created_at": repr(record.created_at),
            "started_at": record.started_at,
            "finished_at": record.finished_at,
            "error": record.error.model_dump_json() if record.error else None,
        }
        items = _flatten(fields)
        keys = [
            self._job(record.id),
            self._outputs(record.id),
            self._counts(),
            self._idx("all"),
            self._idx("state", record.state),
            self._idx("kind", record.kind),
            self._idx("owner", record.owner),
        ]
        keys.append(self._level_idx(record.parent))
        count = f"{record.kind}|{record.state.value}"
        args = [record.id, repr(record.created_at), count, len(items), *items]
        return keys, [*args, *_outputs(record.outputs)]

    def _mark_running_call(self, job_id: str) -> tuple[builtins.list[str], builtins.list[Any]]:
        keys = [
            self._job(job_id),
            self._idx("state", "queued"),
            self._idx("state", "running"),
            self._counts(),
        ]
        return keys, [job_id, repr(time.time())]

    def _chunk_done_call(
        self, job_id: str, index: int
    ) -> tuple[builtins.list[str], builtins.list[Any]]:
        return [self._job(job_id), self._done(job_id)], [index]

    def _finish_call(
        self,
        job_id: str,
        target: JobState,
        fields: dict[str, Any],
        outputs: Sequence[OutputRef] | None,
    ) -> tuple[builtins.list[str], builtins.list[Any]]:
        items = _flatten({"finished_at": repr(time.time()), **fields})
        keys = [
            self._job(job_id),
            self._outputs(job_id),
            self._idx("state", "queued"),
            self._idx("state", "running"),
            self._idx("state", target),
            self._counts(),
            self._payloads(job_id),
        ]
        replace = "0" if outputs is None else "1"
        return keys, [job_id, target.value, replace, len(items), *items, *_outputs(outputs or [])]

    def _if_job(self, job_id: str, command: str, key: str, args: Sequence[str]) -> None:
        """Run ``command key *args`` atomically if the job exists, else raise JobNotFound."""
        with self._guard():
            done = self._if_exists([self._job(job_id), key], [command, *args])
        if not done:
            raise JobNotFound(job_id)

    def _queue_read(self, pipe: Any, job_id: str, *, with_doc: bool = True) -> None:
        """Queue the three reads of a record: its hash (only the mutable fields when
        not ``with_doc``), its done count, its outputs."""
        if with_doc:
            pipe.hgetall(self._job(job_id))
        else:
            pipe.hmget(self._job(job_id), _MUTABLE)
        pipe.scard(self._done(job_id)).lrange(self._outputs(job_id), 0, -1)

    def _index_keys(self, flt: JobFilter) -> builtins.list[str]:
        keys = [
            self._idx(name, value)
            for name, value in (
                ("state", flt.state),
                ("kind", flt.kind),
                ("owner", flt.owner),
                ("parent", flt.parent),
            )
            if value is not None
        ]
        if flt.top_level:
            keys.append(self._idx("top"))
        return keys or [self._idx("all")]

    def _level_idx(self, parent: str | None) -> str:
        """The index a job joins by its place: its batch's children, or the top level."""
        return self._idx("top") if parent is None else self._idx("parent", parent)

    def _ensure_top(self) -> None:
        """Build idx:top from the other indexes if this store predates it (once)."""
        if self._top_built:
            return
        keys = [self._idx("top"), self._idx("all"), self._idx("top", "built")]
        tmp = f"{self.prefix}:tmp:{uuid.uuid4().hex}"
        with self._guard():
            self._build_top([*keys, tmp], [self._idx("parent", "")])
        self._top_built = True

    def _job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _outputs(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:outputs"

    def _done(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:done"

    def _payloads(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:payloads"

    def _counts(self) -> str:
        return f"{self.prefix}:counts"

    def _idx(self, *parts: str) -> str:
        return ":".join((self.prefix, "idx", *parts))

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turns Redis connection failures into BrokerUnavailable."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BrokerUnavailable(
                f"the job store at {safe_url(self.url)} cannot be reached ({exc}); check "
                f"that Redis is running and that state_url points to it (workers retry "
                f"their tasks meanwhile; a client may retry the call)."
            ) from exc


def _tally(reply: Sequence[Any]) -> Tally:
    added, done, total, state = reply
    return Tally(newly_done=added == 1, done=done, total=total, state=JobState(state))


#: The hash fields a record needs besides its doc (those that change after submission).
_MUTABLE = ("state", "stage", "total", "attempts", "started_at", "finished_at", "error")


def _record(
    fields: dict[str, str], done: int, outputs: Sequence[str], doc: JobRecord | None = None
) -> JobRecord:
    # Numbers come back as strings; the record's validation parses them.
    return assemble_record(
        fields["doc"] if doc is None else doc,
        {
            "state": fields["state"],
            "stage": fields["stage"],
            "done": done,
            "total": fields["total"],
            "attempts": fields["attempts"],
            "outputs": [json.loads(o) for o in outputs],
            "error": json.loads(fields["error"]) if "error" in fields else None,
            "started_at": fields.get("started_at"),
            "finished_at": fields.get("finished_at"),
        },
    )


def _flatten(fields: dict[str, Any]) -> list[Any]:
    """Hash field/value items for HSET, leaving out None values."""
    return [item for name, value in fields.items() if value is not None for item in (name, value)]


def _outputs(outputs: Sequence[OutputRef]) -> list[str]:
    return [o.model_dump_json() for o in outputs]
