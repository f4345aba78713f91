"""A small HTTP fault proxy between the tool and the real Restate admin API.

Requests pass through to Restate unless a rule for ``(method, path prefix)`` says otherwise:
delay, an error status (with or without a body), a malformed or Arrow body, an empty 200, a body
cut mid-way (the connection closes before Content-Length is reached), a hook that runs first
(e.g. to kill restate-server in the middle of a runbook), or one that runs once Restate answered
and before the answer goes back (e.g. a resubmission landing between two steps).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from tests.support.local_stack import free_port

Scope = dict[str, Any]


@dataclass
class Fault:
    delay: float = 0.0
    status: int | None = None
    body: bytes = b""
    content_type: str = "application/json"
    cut_body: bool = False
    hook: Callable[[], None] | None = None  # runs before the request goes on
    after: Callable[[], None] | None = (
        None  # runs once upstream answered, before the answer goes back
    )
    times: int | None = None  # None: every matching request
    exact: bool = False  # the rule's path is the whole path, not a prefix


@dataclass
class FaultProxy:
    upstream: str
    rules: dict[tuple[str, str], Fault] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    seen: list[str] = field(default_factory=list)
    peers: list[tuple[str, int]] = field(default_factory=list)  # (path, client port) per request
    # Headers every request must carry (an authenticating gateway): 401 for any that lacks one.
    required_headers: dict[str, str] = field(default_factory=dict)
    # (monotonic time, "in" when a request arrives | "out" once its answer is sent, "METHOD path")
    timeline: list[tuple[float, str, str]] = field(default_factory=list)
    # A network policy: a request whose headers it refuses has its connection dropped unanswered.
    admit: Callable[[dict[str, str]], bool] | None = None
    user_agents: list[str] = field(default_factory=list)  # of every request, admitted or not

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fault_for(self, method: str, path: str) -> Fault | None:
        for (rule_method, prefix), fault in self.rules.items():
            matches = path == prefix if fault.exact else path.startswith(prefix)
            if rule_method == method and matches:
                if fault.times is not None:
                    if fault.times <= 0:
                        continue
                    fault.times -= 1
                return fault
        return None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        self.seen.append(f"{method} {path}")
        self.timeline.append((time.monotonic(), "in", f"{method} {path}"))
        try:
            await self._handle(scope, body, send, method, path)
        finally:
            self.timeline.append((time.monotonic(), "out", f"{method} {path}"))

    async def _handle(self, scope: Scope, body: bytes, send: Any, method: str, path: str) -> None:
        self.peers.append((path, scope["client"][1]))
        sent = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.user_agents.append(sent.get("user-agent", ""))
        if self.admit is not None and not self.admit(sent):
            await self._respond(send, Fault(cut_body=True))  # the connection breaks unanswered
            return
        if any(sent.get(k.lower()) != v for k, v in self.required_headers.items()):
            await self._respond(send, Fault(status=401, body=b'{"detail": "unauthorized"}'))
            return
        fault = self.fault_for(method, path)
        if fault is not None:
            if fault.hook is not None:
                await asyncio.to_thread(fault.hook)
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status is not None or fault.cut_body:
                await self._respond(send, fault)
                return
        query = scope.get("query_string", b"").decode()
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k.lower() != b"host"]
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                upstream = await client.request(
                    method,
                    f"{self.upstream}{path}" + (f"?{query}" if query else ""),
                    content=body,
                    headers=headers,
                )
        except httpx.TransportError:
            await self._respond(send, Fault(cut_body=True))  # upstream gone: cut the answer
            return
        if fault is not None and fault.after is not None:
            await asyncio.to_thread(fault.after)
        await send(
            {
                "type": "http.response.start",
                "status": upstream.status_code,
                "headers": [
                    (k.encode(), v.encode())
                    for k, v in upstream.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
                ],
            }
        )
        await send({"type": "http.response.body", "body": upstream.content})

    async def _respond(self, send: Any, fault: Fault) -> None:
        body = fault.body if not fault.cut_body else b'{"rows": [{"id": "inv_1'
        length = len(body) + (1000 if fault.cut_body else 0)
        await send(
            {
                "type": "http.response.start",
                "status": fault.status or 200,
                "headers": [
                    (b"content-type", fault.content_type.encode()),
                    (b"content-length", str(length).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": fault.cut_body})
        if fault.cut_body:
            raise ConnectionAbortedError("cut mid-body")  # uvicorn closes the connection


@contextmanager
def running(proxy: FaultProxy, *, keep_alive: int = 5) -> Iterator[FaultProxy]:
    """Serve the proxy; ``keep_alive``: how long it keeps an idle client connection open."""
    config = uvicorn.Config(
        proxy,
        host="127.0.0.1",
        port=proxy.port,
        log_level="critical",
        timeout_keep_alive=keep_alive,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "fault proxy did not start"
        time.sleep(0.02)
    try:
        yield proxy
    finally:
        server.should_exit = True
        thread.join(timeout=10)
