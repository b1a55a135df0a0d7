"""/v1/batches: OpenAI's Batch API (see stoker.api.batches)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from stoker.api import batches, webhook_records, webhooks
from stoker.api.deps import KeyDep, StateDep
from stoker.api.webhook_records import WebhookSpec

router = APIRouter(prefix="/v1/batches", tags=["batches"])


class BatchRequest(BaseModel):
    input_file_id: str = Field(max_length=128)
    endpoint: str = Field(max_length=128, description="e.g. /v1/audio/speech")
    completion_window: str = Field(default="24h", max_length=16)
    metadata: dict[str, str] | None = None
    webhook: WebhookSpec | None = Field(default=None, description="stoker extension")


@router.post("")
def create_batch(
    body: BatchRequest, request: Request, state: StateDep, key: KeyDep
) -> dict[str, Any]:
    if body.webhook is not None:
        webhooks.validate_target(body.webhook.url, state.settings.api)
    obj = batches.create_batch(
        state,
        key,
        input_file_id=body.input_file_id,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        metadata=body.metadata,
        base_url=str(request.base_url),
    )
    if body.webhook is not None:
        webhook_records.register(state.meta, obj["id"], key.owner, body.webhook, key.webhook_secret)
    return obj


@router.get("")
def list_batches(
    state: StateDep,
    key: KeyDep,
    after: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    return batches.list_batches(state, key, after=after, limit=limit)


@router.get("/{batch_id}")
def get_batch(batch_id: str, state: StateDep, key: KeyDep) -> dict[str, Any]:
    parent, doc = batches.owned_batch(state, key, batch_id)
    return batches.batch_object(state, parent, doc.data)


@router.post("/{batch_id}/cancel")
def cancel_batch(batch_id: str, state: StateDep, key: KeyDep) -> dict[str, Any]:
    return batches.cancel_batch(state, key, batch_id)
