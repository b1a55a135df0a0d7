"""What the API keeps of each job's webhook: its target and secret, every delivery
attempt, and whether it is still to be told (``webhook_pending``).

Apart from delivery (webhooks.py) and free of FastAPI, because not only the API
changes these records: a retry from the CLI or Python (:meth:`stoker.client.Stoker.retry`)
re-arms the webhook of the job it queues again, from any machine on the same store.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from stoker.api.meta import Doc, MetaStore

HOOK_NS = "webhook"  # one per job: target, secret, attempts
PENDING_NS = "webhook_pending"  # the jobs whose webhook is still to be delivered


class WebhookSpec(BaseModel):
    model_config = {"extra": "forbid"}

    url: str = Field(max_length=2048, description="http(s) URL to POST to when the job ends")
    secret: str | None = Field(default=None, max_length=256, description="HMAC key")


class Attempt(BaseModel):
    at: float
    status_code: int | None = None
    error: str | None = None
    ok: bool


class Webhook(BaseModel):
    job_id: str
    url: str
    secret: str
    attempts: list[Attempt] = Field(default_factory=list)
    state: str = "pending"  # pending, delivered, failed
    next_at: float = 0.0
    # Times the job was retried after its webhook was settled: each end is told anew.
    round: int = 0


def register(meta: MetaStore, job_id: str, owner: str, spec: WebhookSpec, key_secret: str) -> None:
    hook = Webhook(job_id=job_id, url=spec.url, secret=spec.secret or key_secret)
    now = time.time()
    meta.put(Doc(HOOK_NS, job_id, owner, now, hook.model_dump()))
    meta.put(Doc(PENDING_NS, job_id, owner, now, {}))


def rearm(meta: MetaStore, job_id: str) -> None:
    """Tell a retried job's end again: its webhook, if it has one that was delivered
    or gave up, is pending once more, its attempts counted afresh (a round more)."""
    doc = meta.get(HOOK_NS, job_id)
    if doc is None:
        return
    hook = Webhook.model_validate(doc.data)
    if hook.state == "pending":  # not told yet: the retried run's end is told
        return
    hook.state, hook.next_at, hook.round = "pending", 0.0, hook.round + 1
    hook.attempts = []
    meta.put(Doc(HOOK_NS, job_id, doc.owner, doc.created_at, hook.model_dump()))
    meta.put(Doc(PENDING_NS, job_id, doc.owner, time.time(), {}))


def status_of(meta: MetaStore, job_id: str) -> dict[str, Any] | None:
    """What a job shows of its webhook: target, state and attempts (never the secret)."""
    doc = meta.get(HOOK_NS, job_id)
    if doc is None:
        return None
    hook = Webhook.model_validate(doc.data)
    return hook.model_dump(include={"url", "state", "attempts"})
