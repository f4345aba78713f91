"""Pure ASGI middleware: a request id on every answer, the start time, a cap on the body."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from restate_recovery.api.errors import unexpected_response
from restate_recovery.store import utcnow

MAX_BODY_BYTES = 64 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


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
        scope["state"]["started_at"] = utcnow()

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
