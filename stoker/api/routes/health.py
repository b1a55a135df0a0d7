"""/healthz (process up), /readyz (broker, job store and storage reachable), /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stoker.api.deps import StateDep
from stoker.api.errors import error_body

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(state: StateDep) -> JSONResponse:
    from stoker.doctor import check_broker, check_job_store, check_storage

    checks = [c(state.settings) for c in (check_broker, check_job_store, check_storage)]
    failed = [c for c in checks if not c.ok]
    if failed:
        message = "; ".join(f"{c.name}: {c.detail} ({c.fix})" for c in failed)
        body = error_body(f"not ready: {message}", "server_error", "not_ready")
        return JSONResponse(body, 503, headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready", "checks": {c.name: c.detail for c in checks}})


@router.get("/metrics", response_class=Response)
def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
