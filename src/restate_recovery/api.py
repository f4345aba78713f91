"""The operator HTTP API: four routes under /api/v2/admin/operator/restate/ (plus the alert
receiver later), API-key authentication, the error envelope, and an audit row per attempt.

Served by ``restate-recovery api``. Each call runs the same Prefect flow as the CLI, in this
process, and answers with its result; the doctor answers as soon as its probes are done and its
flow run is recorded right after (``operations.DoctorRecorder``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from sqlmodel import Session
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from restate_recovery import store
from restate_recovery.alerts import AlertmanagerWebhook, alert_events, send_events
from restate_recovery.credentials import forget, seal
from restate_recovery.errors import AdminUnreachableError, InvalidRequestError, OperatorError
from restate_recovery.models import DoctorReadout
from restate_recovery.operations import (
    Actor,
    DoctorRecorder,
    audit_refusal,
    audited,
    database_url,
    internal_error_body,
    run_audited,
)
from restate_recovery.schemas import (
    Acknowledged,
    CleanupStaleDeploymentsRequest,
    ForceRedeployRequest,
    RecoverStuckWorkflowRequest,
    Redeployed,
)
from restate_recovery.settings import get_settings

logger = logging.getLogger(__name__)

PREFIX = "/api/v2/admin/operator/restate"
MAX_BODY_BYTES = 64 * 1024
MAX_REASON = 2000
# Doctor answers waiting to be recorded as flow runs; past that a new doctor call waits before
# probing. On shutdown the API waits this long for them.
MAX_PENDING_RECORDS = 16
DRAIN_RECORDS_SECONDS = 30.0
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ErrorBody(BaseModel):
    code: str
    message: str
    data: dict[str, Any] | None = None
    requestId: str  # noqa: N815 - the wire name


class DoctorRequest(BaseModel):
    """The doctor takes an empty JSON object."""

    model_config = ConfigDict(extra="forbid")


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


def envelope(request: Request, status: int, body: dict[str, Any]) -> JSONResponse:
    payload = {**body, "requestId": request_id_of(request)}
    return JSONResponse(payload, status_code=status)


class RequestContext:
    """Pure ASGI middleware: a request id on every response, the start time, a body size cap."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        supplied = headers.get("x-request-id", "")
        request_id = supplied if _REQUEST_ID.fullmatch(supplied) else f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})
        scope["state"]["request_id"] = request_id
        scope["state"]["started_at"] = store.utcnow()

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"].append((b"x-request-id", request_id.encode()))
            await send(message)

        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            await too_large(request_id, send_with_id)
            return
        # Read the body up front (bounded), then replay it: FastAPI turns any error raised while
        # it reads the body into a 400, so the cap must act before FastAPI sees the request.
        chunks: list[bytes] = []
        received = 0
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send_with_id)
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > MAX_BODY_BYTES:
                await too_large(request_id, send_with_id)
                return
            chunks.append(chunk)
            more_body = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        try:
            await self.app(scope, replay, send_with_id)
        except Exception as exc:
            if started:
                raise
            # Answered here, not by Starlette's ServerErrorMiddleware: that one re-raises after
            # answering, and uvicorn then closes the connection, under a client's next request.
            response = unexpected_response(request_id, str(scope.get("path", "")), exc)
            await response(scope, replay, send_with_id)


def unexpected_response(request_id: str, path: str, exc: Exception) -> JSONResponse:
    """The answer to an exception no handler knows: 400 for a body nested too deeply, else a 500
    envelope (never a stack trace; the traceback goes to the log)."""
    if isinstance(exc, RecursionError):
        body = {"code": "INVALID_REQUEST", "message": "Body is nested too deeply"}
        return JSONResponse({**body, "requestId": request_id}, status_code=400)
    logger.error("unexpected error in %s", path, exc_info=exc)
    return JSONResponse({**internal_error_body(exc), "requestId": request_id}, status_code=500)


async def too_large(request_id: str, send: Callable[[Message], Awaitable[None]]) -> None:
    response = JSONResponse(
        {
            "code": "PAYLOAD_TOO_LARGE",
            "message": f"Request body exceeds {MAX_BODY_BYTES} bytes",
            "requestId": request_id,
        },
        status_code=413,
    )
    await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


# --- authentication -----------------------------------------------------------------------------


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _lookup_key(presented: str) -> store.KeyHolder | None:
    with Session(store.engine_for(database_url())) as session:
        return store.authenticate(session=session, presented=presented)


async def operator(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> Actor:
    """The caller, from ``X-Api-Key``: 401 if unknown, 403 without ``system:operate``."""
    if not x_api_key:
        raise AuthError(401, "UNAUTHENTICATED", "Missing X-Api-Key header")
    key = await asyncio.to_thread(_lookup_key, x_api_key)
    if key is None:
        raise AuthError(401, "UNAUTHENTICATED", "Unknown or revoked API key")
    actor = Actor(user_id=key.actor_user_id, role=key.role)
    request.state.actor = actor
    if store.SYSTEM_OPERATE not in key.permissions:
        error = OperatorErrorLike("FORBIDDEN", "This API key lacks system:operate permission")
        await audit_refusal(
            actor=actor,
            route=request.url.path.rsplit("/", 1)[-1],
            arguments={},
            reason=reason_of(request),
            request_id=request_id_of(request),
            error=error,
            started_at=request.state.started_at,
        )
        raise AuthError(403, error.code, error.message)
    return actor


class OperatorErrorLike(OperatorError):
    """An error body with an ad-hoc code (authorization), for the audit row."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (OperatorErrorLike, (self.code, self.message))


OperatorDep = Annotated[Actor, Depends(operator)]


def reason_of(request: Request) -> str | None:
    value = request.headers.get("x-operator-reason")
    if not value:
        return None
    cleaned = "".join(ch for ch in value if ch.isprintable())
    return cleaned[:MAX_REASON] or None


# --- the app ------------------------------------------------------------------------------------


def create_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(database_url)  # migrate the audit database before serving
        yield
        await doctor_records.drain(timeout=DRAIN_RECORDS_SECONDS)
        await doctor_records.aclose()
        flow_threads.shutdown(wait=False)

    app = FastAPI(
        title="restate-recovery operator API",
        version="1",
        description="Operator-only routes that bring the Restate engine back to health.",
        lifespan=lifespan,
    )

    @app.exception_handler(OperatorError)
    async def operator_error(request: Request, exc: OperatorError) -> JSONResponse:
        return envelope(request, exc.http_status, exc.body())

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> JSONResponse:
        return envelope(request, exc.status, {"code": exc.code, "message": exc.message})

    async def refuse_invalid(request: Request, errors: list[dict[str, str]]) -> JSONResponse:
        """400 with the field errors; audited once the caller is known to be an operator."""
        error = InvalidRequestError(
            "Invalid request: " + "; ".join(f"{e['field']}: {e['message']}" for e in errors),
            errors,
        )
        actor: Actor | None = getattr(request.state, "actor", None)
        if actor is None:  # FastAPI parses the body before it authenticates: do that first
            try:
                actor = await operator(request, request.headers.get("x-api-key"))
            except AuthError as auth:
                return envelope(request, auth.status, {"code": auth.code, "message": auth.message})
        await audit_refusal(
            actor=actor,
            route=request.url.path.rsplit("/", 1)[-1],
            arguments={"invalidBody": True},
            reason=reason_of(request),
            request_id=request_id_of(request),
            error=error,
            started_at=request.state.started_at,
        )
        return envelope(request, 400, error.body())

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": ".".join(str(p) for p in e["loc"] if p != "body") or "body",
                "message": e["msg"],
            }
            for e in exc.errors()
        ]
        return await refuse_invalid(request, errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and request.url.path.startswith(PREFIX):  # unreadable body
            return await refuse_invalid(request, [{"field": "body", "message": str(exc.detail)}])
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        return envelope(request, exc.status_code, {"code": code, "message": str(exc.detail)})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return unexpected_response(request_id_of(request), request.url.path, exc)

    # Every write call is a Prefect flow run in this process: past a few at once they only slow each
    # other (and Prefect's server) down, so the rest queue here.
    max_runs = get_settings().recovery_api_max_concurrent_runs
    runs = asyncio.Semaphore(max_runs)
    flow_threads = ThreadPoolExecutor(max_workers=max_runs, thread_name_prefix="flow-run")
    doctor_records = DoctorRecorder(source="operator API", max_pending=MAX_PENDING_RECORDS)

    async def run(
        request: Request,
        actor: Actor,
        route: str,
        arguments: dict[str, Any],
        parameters: dict[str, Any],
    ) -> Any:
        async with runs:
            return await run_audited_call(request, actor, route, arguments, parameters)

    async def run_sealed(
        request: Request,
        actor: Actor,
        route: str,
        body: ForceRedeployRequest | CleanupStaleDeploymentsRequest,
        parameters: dict[str, Any],
    ) -> Any:
        """Run a flow that takes a service URL: it gets the redacted URL and a reference."""
        stored_url, ref = seal(body.service_url)
        try:
            sealed = {**parameters, "service_url": stored_url, "credentials_ref": ref}
            return await run(request, actor, route, body.to_json(), sealed)
        finally:
            forget(ref)

    async def run_audited_call(
        request: Request,
        actor: Actor,
        route: str,
        arguments: dict[str, Any],
        parameters: dict[str, Any],
    ) -> Any:
        return await run_audited(
            actor=actor,
            route=route,
            arguments=arguments,
            reason=reason_of(request),
            request_id=request_id_of(request),
            flow_name=route,
            parameters=parameters,
            started_at=request.state.started_at,
            executor=flow_threads,
        )

    @app.post(
        f"{PREFIX}/doctor",
        response_model=DoctorReadout,
        responses=ERROR_RESPONSES,
        summary="Read-only readout of ingress, admin API, deployments, services, invocations",
    )
    async def doctor(
        request: Request, actor: OperatorDep, body: DoctorRequest | None = None
    ) -> Any:
        readout = await doctor_records.answer(
            actor=actor,
            reason=reason_of(request),
            request_id=request_id_of(request),
            started_at=request.state.started_at,
        )
        # Already a validated DoctorReadout: serialize it once, skip FastAPI's re-validation.
        return Response(readout.model_dump_json(by_alias=True), media_type="application/json")

    @app.post(
        f"{PREFIX}/force-redeploy",
        response_model=Redeployed,
        responses=ERROR_RESPONSES,
        summary="Register the live durable workflow service URL",
    )
    async def force_redeploy(
        request: Request, actor: OperatorDep, body: ForceRedeployRequest
    ) -> Any:
        parameters = {"force": body.force}
        return await run_sealed(request, actor, "force-redeploy", body, parameters)

    @app.post(
        f"{PREFIX}/cleanup-stale-deployments",
        response_model=Acknowledged,
        responses={
            **ERROR_RESPONSES,
            404: {"model": ErrorBody, "description": "RESTATE_DEPLOYMENT_NOT_FOUND"},
        },
        summary="Keep the deployment matching serviceUrl; drain and delete the others",
    )
    async def cleanup_stale_deployments(
        request: Request, actor: OperatorDep, body: CleanupStaleDeploymentsRequest
    ) -> Any:
        parameters = {"force_drain": body.force_drain}
        return await run_sealed(request, actor, "cleanup-stale-deployments", body, parameters)

    @app.post(
        f"{PREFIX}/recover-stuck-workflow",
        response_model=Acknowledged,
        responses={
            **ERROR_RESPONSES,
            409: {"model": ErrorBody, "description": "RESTATE_WORKFLOW_RETRY_BLOCKED"},
        },
        summary="Kill and purge a terminal-failed workflow key and clear its state",
    )
    async def recover_stuck_workflow(
        request: Request, actor: OperatorDep, body: RecoverStuckWorkflowRequest
    ) -> Any:
        return await run(
            request,
            actor,
            "recover-stuck-workflow",
            body.to_json(),
            {"service_name": body.service_name, "service_key": body.service_key},
        )

    app.add_middleware(RequestContext)

    @app.post(
        f"{PREFIX}/alerts",
        response_model=AlertsAccepted,
        responses=ERROR_RESPONSES,
        summary="Alertmanager webhook receiver: each alert becomes a Prefect event",
    )
    async def alerts(request: Request, actor: OperatorDep, body: AlertmanagerWebhook) -> Any:
        events = alert_events(body)

        async def call() -> tuple[Any, str | None]:
            from prefect.settings import PREFECT_API_URL

            api_url = PREFECT_API_URL.value()
            if not api_url:
                raise AdminUnreachableError(
                    "PREFECT_API_URL is not set: alerts need a running Prefect server"
                )
            try:
                await send_events(api_url, events)
            except httpx.HTTPError as exc:
                raise AdminUnreachableError(
                    f"Prefect did not take the events: {type(exc).__name__}"
                ) from exc
            return AlertsAccepted(events=len(events)).model_dump(), None

        return await audited(
            actor=actor,
            route="alerts",
            arguments={"alerts": [e["resource"]["prefect.resource.id"] for e in events]},
            reason=reason_of(request),
            request_id=request_id_of(request),
            started_at=request.state.started_at,
            call=call,
        )

    return app


class AlertsAccepted(BaseModel):
    acknowledged: bool = True
    events: int
