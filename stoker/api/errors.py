"""Every error answer has OpenAI's shape::

    {"error": {"message": "...", "type": "invalid_request_error", "code": "...", "param": ...}}

StokerErrors map to statuses by what they mean (bad input 400, missing 404, a service
that is down 503 with Retry-After); request validation names the field (422); an
unexpected exception is a stoker bug and the only source of a 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from stoker import errors as se

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than success, raised by routes and dependencies."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}


def not_found(what: str, id: str) -> ApiError:
    return ApiError(404, f"no {what} with id {id!r}.", code="not_found")


def error_body(
    message: str, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "code": code, "param": param}}


def _status_of(exc: se.StokerError) -> int:
    if isinstance(exc, se.JobNotFound | se.ObjectNotFound):
        return 404
    if isinstance(exc, se.MissingDependency | se.ConfigError | se.TransientError):
        return 503
    if isinstance(exc, se.ModelTooLarge):
        return 422
    return 400 if isinstance(exc, se.PermanentError) else 503


def stoker_error_response(exc: se.StokerError) -> JSONResponse:
    status = _status_of(exc)
    kind = "server_error" if status >= 500 else "invalid_request_error"
    if status == 404:
        kind = "not_found_error"
    headers = {"Retry-After": "5"} if status == 503 else None
    param = exc.param if isinstance(exc, se.InvalidInput) else None
    body = error_body(str(exc), kind, exc.kind, param)
    return JSONResponse(body, status, headers=headers)


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    body = error_body(exc.message, exc.type, exc.code, exc.param)
    return JSONResponse(body, exc.status, headers=exc.headers)


async def _on_stoker_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, se.StokerError)
    return stoker_error_response(exc)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request"))
    where = f"{param}: " if param else ""
    body = error_body(
        f"{where}{msg}; fix this field and resend.", "invalid_request_error", "invalid_value", param
    )
    return JSONResponse(body, 422)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    if exc.status_code >= 500:
        kind = "server_error"
    body = error_body(str(exc.detail), kind, f"http_{exc.status_code}")
    return JSONResponse(body, exc.status_code, headers=getattr(exc, "headers", None))


async def _on_bug(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    body = error_body("internal error in stoker; see the API log.", "server_error", "internal")
    return JSONResponse(body, 500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(se.StokerError, _on_stoker_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(Exception, _on_bug)
