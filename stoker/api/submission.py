"""Submitting one job over HTTP: capacity check, inputs, idempotency, webhook."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from stoker.api import inputs, webhook_records, webhooks
from stoker.api.errors import ApiError
from stoker.api.keys import ApiKey
from stoker.api.meta import Doc
from stoker.api.state import ApiState
from stoker.config import Priority
from stoker.errors import JobNotFound
from stoker.jobs import get_capability
from stoker.queues.records import JobRecord

IDEM_NS = "idempotency"


def check_capacity(state: ApiState, kind: str) -> None:
    """429 with Retry-After when ``kind``'s queue holds its configured maximum."""
    api = state.settings.api
    limit = api.max_queue_depth.get(kind, api.default_max_queue_depth)
    if limit is None:
        return
    depth = state.queue_depth(kind)
    if depth >= limit:
        raise ApiError(
            429,
            f"the {kind} queue holds {depth} waiting chunks (limit {limit}); retry later.",
            type="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": str(api.retry_after_s)},
        )


def _idem_id(owner: str, key: str) -> str:
    return hashlib.sha256(f"{owner}\x00{key}".encode()).hexdigest()


def _earlier(state: ApiState, owner: str, idempotency_key: str | None) -> JobRecord | None:
    if not idempotency_key:
        return None
    doc = state.meta.get(IDEM_NS, _idem_id(owner, idempotency_key))
    if doc is None:
        return None
    try:
        return state.stoker.status(doc.data["job_id"])
    except JobNotFound:
        return None


def submit_job(
    state: ApiState,
    key: ApiKey,
    *,
    kind: str,
    params: dict[str, Any],
    priority: Priority | None,
    webhook: webhook_records.WebhookSpec | None,
    idempotency_key: str | None,
) -> tuple[JobRecord, bool]:
    """Submit (or find the earlier job of the same idempotency key); (record, is new)."""
    earlier = _earlier(state, key.owner, idempotency_key)
    if earlier is not None:
        return earlier, False
    get_capability(kind)  # an unknown kind is refused before anything else
    if webhook is not None:
        webhooks.validate_target(webhook.url, state.settings.api)
    check_capacity(state, kind)
    with inputs.resolved(state, key, params) as request:
        record = state.stoker.submit(kind, request, owner=key.owner, priority=priority)
    state.metrics.submitted.labels(kind).inc()
    state.queued(kind, len(record.chunks))
    if idempotency_key:
        doc = Doc(
            IDEM_NS,
            _idem_id(key.owner, idempotency_key),
            key.owner,
            time.time(),
            {"job_id": record.id},
        )
        if not state.meta.insert_new(doc):  # a concurrent twin won: keep its job only
            state.stoker.cancel(record.id)
            twin = _earlier(state, key.owner, idempotency_key)
            if twin is not None:
                return twin, False
    if webhook is not None:
        webhook_records.register(state.meta, record.id, key.owner, webhook, key.webhook_secret)
    return record, True
