"""FastAPI dependencies: the app's state and the caller's API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from stoker.api.errors import ApiError, not_found
from stoker.api.keys import ApiKey, authenticate
from stoker.api.state import ApiState
from stoker.errors import JobNotFound
from stoker.queues.records import JobRecord

_bearer = HTTPBearer(auto_error=False, description="An API key from `stoker keys create`.")


def api_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


StateDep = Annotated[ApiState, Depends(api_state)]


def current_key(
    state: StateDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    """The caller's key; 401 when it is missing or unknown."""
    if creds is None:
        raise ApiError(
            401,
            "missing API key; send 'Authorization: Bearer <key>' (create one with "
            "`stoker keys create NAME`).",
            type="authentication_error",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = authenticate(state.meta, creds.credentials)
    if key is None:
        raise ApiError(
            401,
            "invalid API key; check it, or create one with `stoker keys create NAME`.",
            type="authentication_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return key


KeyDep = Annotated[ApiKey, Depends(current_key)]


def visible(key: ApiKey, owner: str) -> bool:
    return key.admin or key.owner == owner


def owned_job(state: ApiState, key: ApiKey, job_id: str) -> JobRecord:
    """The job if the key may see it; 404 otherwise (never 403: ids are not confirmed)."""
    try:
        record = state.metrics.job_seen(state.stoker.status(job_id))
    except JobNotFound:
        raise not_found("job", job_id) from None
    if not visible(key, record.owner):
        raise not_found("job", job_id)
    return record
