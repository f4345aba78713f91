"""The error envelope every answer but a success uses: ``{code, message, data?, requestId}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from restate_recovery.errors import OperatorError, error_body
from restate_recovery.paths import PREFIX

logger = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    code: str
    message: str
    data: dict[str, Any] | None = None
    requestId: str  # noqa: N815 - the wire name


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "Invalid request body (INVALID_REQUEST, with field errors)",
        401: "Missing, unknown or revoked API key (UNAUTHENTICATED)",
        403: "The API key lacks system:operate (FORBIDDEN)",
        413: "Request body too large (PAYLOAD_TOO_LARGE)",
        500: "Unexpected error (INTERNAL_ERROR), never a stack trace",
        503: "RESTATE_ADMIN_UNREACHABLE",
    }.items()
}


def request_id_of(request: Request) -> str:
    value: str = request.state.request_id
    return value


def envelope(request_id: str, status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse({**body, "requestId": request_id}, status_code=status)


def error_response(request: Request, error: OperatorError) -> JSONResponse:
    return envelope(request_id_of(request), error.http_status, error.body())


def unexpected_response(request_id: str, path: str, exc: Exception) -> JSONResponse:
    """The answer to an exception no handler knows: 400 for a body nested too deeply, else a 500
    envelope (never a stack trace; the traceback goes to the log)."""
    if isinstance(exc, RecursionError):
        body = {"code": "INVALID_REQUEST", "message": "Body is nested too deeply"}
        return envelope(request_id, 400, body)
    logger.error("unexpected error in %s", path, exc_info=exc)
    return envelope(request_id, 500, error_body(exc))


def field_errors_of(exc: RequestValidationError) -> list[dict[str, str]]:
    return [
        {
            "field": ".".join(str(p) for p in e["loc"] if p != "body") or "body",
            "message": e["msg"],
        }
        for e in exc.errors()
    ]


def install(app: FastAPI) -> None:
    """The exception handlers: operator errors as their envelope, invalid bodies as audited
    ``INVALID_REQUEST``, anything else as ``INTERNAL_ERROR``."""
    from restate_recovery.api.deps import refuse_invalid

    @app.exception_handler(OperatorError)
    async def operator_error(request: Request, exc: OperatorError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, await refuse_invalid(request, field_errors_of(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and request.url.path.startswith(PREFIX):  # unreadable body
            errors = [{"field": "body", "message": str(exc.detail)}]
            return error_response(request, await refuse_invalid(request, errors))
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        body = {"code": code, "message": str(exc.detail)}
        return envelope(request_id_of(request), exc.status_code, body)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return unexpected_response(request_id_of(request), request.url.path, exc)
