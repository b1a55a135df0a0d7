"""Webhooks: a signed POST when a job or batch ends (succeeded, failed, cancelled).

Delivered from the API process, never from a worker: a background thread watches the
jobs that have a pending webhook, POSTs once each ends, and retries failures with
doubling backoff (``api.webhook_backoff_s``, ``api.webhook_max_attempts`` times). Every
attempt is recorded and shown on the job (``webhook.attempts``). The body is JSON; the
header ``X-Stoker-Signature: sha256=<hex>`` is the HMAC-SHA256 of the exact body bytes
with the webhook's secret, or with the API key's webhook secret when it has none.

Several API processes may run on one store: each attempt (job, its end state, attempt
number) is claimed in the store first (Redis ``SET NX`` with an expiry, a SQLite row),
so exactly one process makes it. A claim outlives a delivery's timeout by a margin; if
the process that holds it dies mid-attempt, another takes the attempt over once the
claim expires.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from stoker.api.errors import ApiError
from stoker.api.meta import Doc, MetaStore
from stoker.api.webhook_records import HOOK_NS, PENDING_NS, Attempt, Webhook
from stoker.config import ApiSettings
from stoker.errors import JobNotFound, StokerError
from stoker.queues.records import JobRecord

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Stoker-Signature"
#: How long (s) a delivery claim outlives the delivery's timeout: time to record the
#: attempt after the POST returns.
CLAIM_MARGIN_S = 30.0


def validate_target(url: str, settings: ApiSettings) -> None:
    """ApiError 400 unless ``url`` is http(s) with a host (in the allow-list, if one is set)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(
            400,
            f"webhook.url {url!r} must be an http:// or https:// URL.",
            param="webhook.url",
            code="invalid_webhook",
        )
    allowed = settings.webhook_allow_hosts
    if allowed and parts.hostname not in allowed:
        raise ApiError(
            400,
            f"webhook host {parts.hostname!r} is not allowed; allowed hosts: "
            f"{', '.join(allowed)} (api.webhook_allow_hosts).",
            param="webhook.url",
            code="webhook_host_not_allowed",
        )


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def event_body(record: JobRecord, extra: dict[str, Any]) -> bytes:
    event = {
        "type": f"job.{record.state.value}",
        "job_id": record.id,
        "kind": record.kind,
        "state": record.state.value,
        "error": record.error.model_dump() if record.error else None,
        "created_at": record.created_at,
        "finished_at": record.finished_at,
        **extra,
    }
    return json.dumps(event, separators=(",", ":")).encode()


Post = Callable[[str, bytes, dict[str, str]], int]


class Deliverer:
    """Delivers due webhooks; :meth:`run_once` is one pass (tests call it directly)."""

    def __init__(
        self,
        meta: MetaStore,
        get_job: Callable[[str], JobRecord],
        settings: ApiSettings,
        post: Post,
        on_result: Callable[[bool], None] = lambda ok: None,
        extra: Callable[[JobRecord], dict[str, Any]] = lambda r: {},
    ) -> None:
        self.meta = meta
        self.get_job = get_job
        self.settings = settings
        self.post = post
        self.on_result = on_result
        self.extra = extra

    def run_once(self) -> int:
        """Try every due delivery once; returns how many were attempted."""
        attempted = 0
        for pending in self.meta.list(PENDING_NS, None, 200):
            try:
                attempted += self._try(pending.id, pending.owner)
            except StokerError as exc:  # the store or a job is unreadable: next pass
                log.warning("webhook for %s not attempted: %s", pending.id, exc)
        return attempted

    def _try(self, job_id: str, owner: str) -> int:
        doc = self.meta.get(HOOK_NS, job_id)
        if doc is None:
            self.meta.delete(PENDING_NS, job_id)
            return 0
        hook = Webhook.model_validate(doc.data)
        if hook.state != "pending":  # another process ended it since this pass listed it
            return 0
        try:
            record = self.get_job(job_id)
        except JobNotFound:  # deleted (`stoker delete`): nothing is left to tell
            log.info("webhook for %s dropped: the job was deleted", job_id)
            self.meta.delete(PENDING_NS, job_id)
            self.meta.delete(HOOK_NS, job_id)
            return 0
        if not record.state.terminal or hook.next_at > time.time():
            return 0
        claim = f"webhook:{job_id}:{hook.round}:{record.state.value}:{len(hook.attempts)}"
        if not self.meta.claim(claim, self.settings.webhook_timeout_s * 2 + CLAIM_MARGIN_S):
            return 0  # another API process makes this attempt
        body = event_body(record, self.extra(record))
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, hook.secret)}
        attempt = self._post(hook.url, body, headers)
        hook.attempts.append(attempt)
        self.on_result(attempt.ok)
        if attempt.ok or len(hook.attempts) >= self.settings.webhook_max_attempts:
            hook.state = "delivered" if attempt.ok else "failed"
        else:
            delay = self.settings.webhook_backoff_s * 2 ** (len(hook.attempts) - 1)
            hook.next_at = time.time() + delay
        self.meta.put(Doc(HOOK_NS, job_id, owner, doc.created_at, hook.model_dump()))
        if hook.state != "pending":
            self.meta.delete(PENDING_NS, job_id)
        return 1

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
        try:
            status = self.post(url, body, headers)
        except Exception as exc:
            return Attempt(at=time.time(), error=f"{type(exc).__name__}: {exc}"[:300], ok=False)
        return Attempt(at=time.time(), status_code=status, ok=200 <= status < 300)


def httpx_post(timeout_s: float) -> Post:
    import httpx

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        # No redirects: a validated target must not bounce the body elsewhere.
        response = httpx.post(
            url, content=body, headers=headers, timeout=timeout_s, follow_redirects=False
        )
        return response.status_code

    return post


class DeliveryThread:
    """Runs a :class:`Deliverer` every ``poll_s`` until stopped."""

    def __init__(self, deliverer: Deliverer, poll_s: float) -> None:
        self._deliverer = deliverer
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stoker-webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self._deliverer.run_once()
            except Exception:
                log.exception("webhook pass failed")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
