"""Batches: one submission of many inputs (a folder of recordings) as one parent job.

The parent (kind ``batch``) has one child job per input, recorded and queued in
groups (``GROUP``); its progress counts children that ended, like OpenAI's
``request_counts``. A child that cannot even be submitted (an empty or corrupt file)
is recorded as failed with its reason — the batch goes on. When the last child ends,
the batch writes ``manifest.json`` (every input → its outputs, duration, language,
state) and ``errors.jsonl`` (one line per failed input) and succeeds.

Children are counted with the same atomic tally as chunks (``chunk_done`` on the
parent, indexed by the child's place in the batch), so exactly one process sees the
last child end and assembles the batch.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stoker.errors import BrokerUnavailable, InvalidInput, PermanentError, StokerError
from stoker.queues.records import JobError, JobFilter, JobRecord, JobState, OutputRef, Progress
from stoker.queues.records import new_record as _new_record
from stoker.queues.stores.base import JobStore, list_all
from stoker.queues.submit import StagedJob
from stoker.storage import Storage
from stoker.storage.keys import job_key

log = logging.getLogger(__name__)

BATCH_KIND = "batch"

#: stages one child: (request, parent id, index) → the child validated, its inputs stored
StageChild = Callable[[dict[str, Any], str, int], StagedJob]
#: records and queues staged children (queues.submit.commit)
Commit = Callable[[list[StagedJob]], None]

#: Children recorded and queued together: one write to the store and, on Redis, one
#: round trip to the broker for the group, where one each cost ~1 ms a line.
GROUP = 256


@dataclass(frozen=True)
class Refused:
    """An input of a batch that is not a request at all (a malformed line of a prompt
    file): recorded as a failed child named ``name``, with ``reason``, as an input
    the capability refuses is."""

    name: str
    reason: str


def submit_batch(
    *,
    store: JobStore,
    storage: Storage,
    kind: str,
    requests: Sequence[dict[str, Any] | Refused],
    stage_child: StageChild,
    commit: Commit,
    owner: str,
    source: str,
    retriable: bool = True,
    unit: str = "files",
    created: Callable[[JobRecord], None] = lambda parent: None,
) -> JobRecord:
    """Record a batch of ``requests`` for ``kind`` and submit each as a child job.

    ``retriable=False`` (an OpenAI batch, whose output files are final once written)
    makes Stoker.retry refuse the batch and its files. ``unit`` is what the CLI calls
    its inputs (:func:`batch_unit`): files of a folder, lines of a prompt file.
    ``created(parent)`` runs once the batch is recorded, before any child is queued:
    what it stores is there before the batch can end."""
    parent = _new_record(
        kind=BATCH_KIND,
        owner=owner,
        params={
            "kind": kind,
            "source": source,
            **({} if retriable else {"retriable": False}),
            **({} if unit == "files" else {"unit": unit}),
        },
        progress=Progress(total=len(requests), stage="running"),
    )
    store.create(parent)
    try:
        created(parent)
    except StokerError as exc:  # nothing queued yet: the batch ends here, saying why
        store.fail(parent.id, JobError(kind=exc.kind, message=f"not submitted: {exc}"))
        raise
    staged: list[StagedJob] = []
    refused: list[BrokerUnavailable] = []
    for index, request in enumerate(requests):
        try:
            if isinstance(request, Refused):
                raise InvalidInput(request.reason)
            staged.append(stage_child(request, parent.id, index))
        except PermanentError as exc:
            _record_refused(store, kind, owner, _name(request, index), parent.id, index, exc)
            child_ended(store, storage, parent.id, index)
        if len(staged) == GROUP:
            _commit_group(store, storage, parent.id, commit, staged, refused)
            staged = []
    if staged:
        _commit_group(store, storage, parent.id, commit, staged, refused)
    if not requests:
        assemble_batch(store, storage, parent.id)
    if refused:
        raise refused[0]
    return store.get(parent.id)


def _commit_group(
    store: JobStore,
    storage: Storage,
    parent_id: str,
    commit: Commit,
    group: list[StagedJob],
    refused: list[BrokerUnavailable],
) -> None:
    """Commit ``group``; if the broker refuses it, its jobs (recorded, and failed by
    the commit with the reason) are counted as ended, and the error is kept in
    ``refused`` for the caller to raise once every line is recorded: the batch then
    ends, with every line in it, and `stoker retry` queues the failed ones again.
    Raises at once if they cannot even be counted (the job store is down too)."""
    try:
        commit(group)
    except BrokerUnavailable as exc:
        try:
            for job in group:
                child_ended(store, storage, parent_id, job.record.parent_index or 0)
        except StokerError:
            raise exc from None
        refused.append(exc)


def _name(request: dict[str, Any] | Refused, index: int) -> str:
    if isinstance(request, Refused):
        return request.name
    return str(request.get("name") or request.get("path") or f"input {index}")


def _record_refused(
    store: JobStore,
    kind: str,
    owner: str,
    name: str,
    parent_id: str,
    index: int,
    exc: PermanentError,
) -> None:
    child = _new_record(
        kind=kind, owner=owner, params={"name": name}, parent=parent_id, parent_index=index
    )
    store.create(child)
    store.fail(child.id, JobError(kind=exc.kind, message=str(exc)))
    log.info("batch %s: %s refused: %s", parent_id, name, exc)


def batch_unit(batch: JobRecord) -> str:
    """What a batch's inputs are, for people: "files", or "lines" of a prompt file."""
    return str(batch.params.get("unit") or "files")


def child_ended(store: JobStore, storage: Storage, parent_id: str, index: int) -> None:
    """Count child ``index`` as ended; the caller that ends the last one assembles."""
    tally = store.chunk_done(parent_id, index)
    if tally.done == tally.total and not tally.state.terminal:
        assemble_batch(store, storage, parent_id)


def children(store: JobStore, parent_id: str) -> list[JobRecord]:
    """Every child of the batch, in input order (pages through the parent index)."""
    found = list_all(store, JobFilter(parent=parent_id))
    return sorted(found, key=lambda r: r.parent_index or 0)


def request_counts(kids: list[JobRecord]) -> dict[str, int]:
    """OpenAI's request_counts of a batch whose jobs are ``kids``."""
    return counts_by_state(Counter(kid.state for kid in kids))


def counts_by_state(by_state: Mapping[JobState, int]) -> dict[str, int]:
    """OpenAI's request_counts from a batch's jobs per state (JobStore.child_counts):
    a cancelled job counts as failed."""
    failed = by_state.get(JobState.FAILED, 0) + by_state.get(JobState.CANCELLED, 0)
    completed = by_state.get(JobState.SUCCEEDED, 0)
    return {"total": sum(by_state.values()), "completed": completed, "failed": failed}


def _entry(kid: JobRecord, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": kid.params.get("name"),
        "job_id": kid.id,
        "state": kid.state.value,
        "outputs": {o.name: o.key for o in kid.outputs if not o.partial},
        "duration_s": kid.params.get("duration_s"),
        "language": meta.get("language"),
        "error": kid.error.model_dump() if kid.error else None,
    }


def _child_meta(storage: Storage, kid: JobRecord) -> dict[str, Any]:
    manifest = next((o for o in kid.outputs if o.name == "manifest.json"), None)
    if manifest is None:
        return {}
    outputs = json.loads(storage.get_bytes(manifest.key)).get("outputs", [])
    return dict(outputs[0].get("meta", {})) if outputs else {}


def assemble_batch(store: JobStore, storage: Storage, parent_id: str) -> None:
    """Write the batch's manifest and error file; mark it succeeded."""
    parent = store.get(parent_id)
    kids = children(store, parent_id)
    manifest = {
        "batch_id": parent_id,
        "kind": parent.params.get("kind"),
        "source": parent.params.get("source"),
        "request_counts": request_counts(kids),
        "files": [_entry(k, _child_meta(storage, k)) for k in kids],
    }
    errors = "".join(
        json.dumps({"name": k.params.get("name"), "job_id": k.id, "error": k.error.model_dump()})
        + "\n"
        for k in kids
        if k.error is not None
    )
    outputs = []
    for name, data, content_type in (
        ("manifest.json", json.dumps(manifest, indent=2).encode(), "application/json"),
        ("errors.jsonl", errors.encode(), "application/jsonl"),
    ):
        info = storage.put_bytes(job_key(parent_id, name), data, content_type)
        outputs.append(
            OutputRef(
                name=name, key=info.key, size_bytes=info.size_bytes, content_type=content_type
            )
        )
    if store.succeed(parent_id, outputs):
        log.info("batch %s done: %s", parent_id, manifest["request_counts"])
