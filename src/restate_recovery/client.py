"""A thin async client over the Restate admin API (and the ingress health probe).

Keyword arguments in, pydantic models out. Every HTTP failure is translated once, here, into
``RestateUnreachable`` (no usable answer) or ``RestateRejected`` (an error status, with Restate's
``message`` and ``restate_code``). Messages name the method and path, never the full URL: a base
URL may carry credentials.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
from collections.abc import Callable
from functools import cache
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from restate_recovery.errors import RestateBadResponse, RestateRejected, RestateUnreachable
from restate_recovery.models import (
    Deployment,
    DeploymentList,
    QueryResult,
    RegisteredDeployment,
    ServiceInfo,
    ServiceList,
    VersionInfo,
)
from restate_recovery.sql import INVOCATION_ID

logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)

_DEPLOYMENT_ID = re.compile(r"^dp_[0-9a-zA-Z]+$")
_SERVICE_NAME = re.compile(r"^[a-zA-Z0-9_.-]+$")
INVOCATION_ACTIONS = ("kill", "purge", "pause", "resume", "cancel")


class Routes:
    """Every admin API path the runbooks use, in one place."""

    health = "/health"
    version = "/version"
    deployments = "/deployments"
    services = "/services"
    query = "/query"
    ingress_health = "/restate/health"

    @staticmethod
    def deployment(deployment_id: str) -> str:
        return f"/deployments/{_checked(_DEPLOYMENT_ID, deployment_id, 'deployment id')}"

    @staticmethod
    def invocation(invocation_id: str, action: str) -> str:
        if action not in INVOCATION_ACTIONS:
            raise ValueError(f"unknown invocation action {action!r}")
        return f"/invocations/{_checked(INVOCATION_ID, invocation_id, 'invocation id')}/{action}"

    @staticmethod
    def service_state(service_name: str) -> str:
        name = _checked(_SERVICE_NAME, service_name, "service name")
        return f"/services/{quote(name, safe='')}/state"


def _checked(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid {what}")
    return value


def _transport_message(exc: httpx.TransportError) -> str:
    detail = str(exc) or "no detail"
    return f"{type(exc).__name__}: {detail}"


def _error_message(response: httpx.Response) -> tuple[str, str | None]:
    """Restate's ``message`` and ``restate_code`` from an error answer (JSON or plain text)."""
    text = response.text.strip()
    if not text:
        return (response.reason_phrase or f"HTTP {response.status_code}"), None
    try:
        body = json.loads(text)
    except ValueError:
        return text[:500], None
    if isinstance(body, dict):
        message = body.get("message")
        code = body.get("restate_code")
        return (
            str(message) if message is not None else text[:500],
            str(code) if code is not None else None,
        )
    return text[:500], None


@cache
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process: httpx builds a new one per client otherwise, which
    costs about 15 ms (loading the CA bundle), more than a whole doctor probe."""
    return httpx.create_ssl_context()


# /query goes out on a new connection each time, closed after its answer: an answer on a reused
# keep-alive connection arrived about 40 ms late (TCP delayed ACK; docs/performance.md), and a query
# must not take the warm connections the other calls keep (a fresh loopback one costs under 1 ms).
QUERY_LIMITS = httpx.Limits(max_keepalive_connections=0)


# What restate-server 1.7 answers /query (500) while a partition moves between the nodes of a
# cluster (a node died or came back; seen for 1 to 3 s, docs/cluster.md): a read asked again a
# moment later is answered.
MOVING_PARTITION = re.compile(
    r"this is benign if the partition is being transferred|connect throttled|"
    r"expecting a partition store",
    re.IGNORECASE,
)
MOVING_PARTITION_RETRIES = (0.25, 0.5, 1.0, 2.0)  # seconds before each ask again


def partition_moving(exc: RestateRejected) -> bool:
    return exc.status_code == 500 and bool(MOVING_PARTITION.search(exc.message))


class RestateAdminClient:
    """Async client over one Restate admin API base URL. ``queries`` carries ``/query`` (by
    default the same client)."""

    def __init__(self, http: httpx.AsyncClient, queries: httpx.AsyncClient | None = None) -> None:
        self._http = http
        self._queries = queries or http

    @classmethod
    def connect(
        cls,
        base_url: str,
        *,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits = httpx.Limits(),  # noqa: B008 - immutable
    ) -> Self:
        def client(limits: httpx.Limits) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                base_url=base_url.rstrip("/"),
                timeout=httpx.Timeout(timeout),
                transport=transport,
                follow_redirects=False,
                verify=tls_context(),
                limits=limits,
            )

        return cls(client(limits), queries=client(QUERY_LIMITS))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        try:
            await self._http.aclose()
        finally:
            if self._queries is not self._http:
                await self._queries.aclose()

    # --- plumbing -----------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        on_sent: Callable[[], None] | None = None,
        queries: bool = False,
    ) -> httpx.Response:
        return await send(
            self._queries if queries else self._http,
            method,
            path,
            json_body=json_body,
            params=params,
            headers=headers,
            timeout=timeout,
            on_sent=on_sent,
        )

    @staticmethod
    def _parse(model: type[ModelT], response: httpx.Response) -> ModelT:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            method, path = response.request.method, response.request.url.path
            first = exc.errors()[0]
            detail = f"{first['type']} at {'.'.join(str(p) for p in first['loc']) or 'body'}"
            raise RestateBadResponse(
                f"unexpected {model.__name__} payload ({detail})",
                method,
                path,
                response.status_code,
            ) from exc

    # --- health and version -------------------------------------------------------------------

    async def health(self, *, timeout: float | None = None) -> None:
        await self._request("GET", Routes.health, timeout=timeout)

    async def version(self, *, timeout: float | None = None) -> VersionInfo:
        return self._parse(VersionInfo, await self._request("GET", Routes.version, timeout=timeout))

    # --- deployments --------------------------------------------------------------------------

    async def list_deployments(self, *, timeout: float | None = None) -> list[Deployment]:
        response = await self._request("GET", Routes.deployments, timeout=timeout)
        return self._parse(DeploymentList, response).deployments

    async def register_deployment(
        self,
        *,
        uri: str,
        force: bool,
        dry_run: bool = False,
        use_http_11: bool = False,
        timeout: float | None = None,
    ) -> RegisteredDeployment:
        """Register ``uri``. ``force`` is always sent: Restate treats an omitted one as false.
        With ``dry_run`` Restate runs discovery and answers, registering nothing; ``use_http_11``
        discovers over HTTP/1.1 (an endpoint that serves no HTTP/2)."""
        body: dict[str, Any] = {"uri": uri, "force": force}
        if dry_run:
            body["dry_run"] = True
        if use_http_11:
            body["use_http_11"] = True
        response = await self._request("POST", Routes.deployments, json_body=body, timeout=timeout)
        return self._parse(RegisteredDeployment, response)

    async def delete_deployment(self, deployment_id: str, *, timeout: float | None = None) -> None:
        """Delete at once (``force=true``, the only deletion Restate 1.7 supports)."""
        await self._request(
            "DELETE", Routes.deployment(deployment_id), params={"force": "true"}, timeout=timeout
        )

    # --- services and state -------------------------------------------------------------------

    async def list_services(self, *, timeout: float | None = None) -> list[ServiceInfo]:
        response = await self._request("GET", Routes.services, timeout=timeout)
        return self._parse(ServiceList, response).services

    async def set_state(
        self,
        *,
        service_name: str,
        service_key: str,
        new_state: dict[str, list[int]],
        version: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Replace a key's whole state (``{}`` clears it). With ``version`` (of the state it
        replaces) Restate applies it only if the state is still that one. Restate answers 202
        even when it ignores the write: read it back to know."""
        body: dict[str, Any] = {"object_key": service_key, "new_state": new_state}
        if version is not None:
            body["version"] = version
        await self._request(
            "POST", Routes.service_state(service_name), json_body=body, timeout=timeout
        )

    # --- SQL introspection --------------------------------------------------------------------

    async def query(
        self,
        sql: str,
        *,
        timeout: float | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Run a read-only SQL query. NULL columns are absent from a row: read with ``.get()``.
        ``on_sent`` is called once the whole request is on the wire. A query that meets a
        partition moving between the nodes of a cluster is asked again, after each of
        ``MOVING_PARTITION_RETRIES`` (it only reads)."""
        for delay in (*MOVING_PARTITION_RETRIES, None):
            try:
                response = await self._request(
                    "POST",
                    Routes.query,
                    json_body={"query": sql},
                    # accept: exactly this, or Restate answers Arrow. connection: close: see
                    # QUERY_LIMITS.
                    headers={"accept": "application/json", "connection": "close"},
                    timeout=timeout,
                    on_sent=on_sent,
                    queries=True,
                )
                break
            except RestateRejected as exc:
                if delay is None or not partition_moving(exc):
                    raise
                logger.info("%s; asking again in %g s", exc, delay)
                await asyncio.sleep(delay)
        return self._parse(QueryResult, response).rows

    # --- invocations --------------------------------------------------------------------------

    async def kill_invocation(self, invocation_id: str, *, timeout: float | None = None) -> None:
        await self._request("PATCH", Routes.invocation(invocation_id, "kill"), timeout=timeout)

    async def purge_invocation(self, invocation_id: str, *, timeout: float | None = None) -> None:
        await self._request("PATCH", Routes.invocation(invocation_id, "purge"), timeout=timeout)

    async def pause_invocation(self, invocation_id: str, *, timeout: float | None = None) -> None:
        await self._request("PATCH", Routes.invocation(invocation_id, "pause"), timeout=timeout)

    async def resume_invocation(
        self, invocation_id: str, *, deployment: str | None = None, timeout: float | None = None
    ) -> None:
        params = {"deployment": deployment} if deployment else None
        await self._request(
            "PATCH", Routes.invocation(invocation_id, "resume"), params=params, timeout=timeout
        )


# What a kept-alive connection the server (or a proxy) closed just as it was reused looks like. A
# GET changes nothing, so it is asked once more (a new connection) before anything is reported.
STALE_CONNECTION = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


async def send(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float | None = None,
    on_sent: Callable[[], None] | None = None,
) -> httpx.Response:
    """Send one request; translate transport failures and error statuses into our tree.
    ``on_sent`` is called once the request (headers and body) has been written."""
    extra: dict[str, Any] = {}
    if timeout is not None:
        extra["timeout"] = httpx.Timeout(timeout)
    if on_sent is not None:
        extra["extensions"] = {"trace": _call_when_sent(on_sent)}
    tries = 2 if method == "GET" else 1
    while True:
        tries -= 1
        try:
            response = await http.request(
                method, path, json=json_body, params=params, headers=headers, **extra
            )
            break
        except httpx.TransportError as exc:
            if tries and isinstance(exc, STALE_CONNECTION):
                logger.info("%s %s: %s, asking once more", method, path, type(exc).__name__)
                continue
            raise RestateUnreachable(_transport_message(exc), method, path) from exc
    if response.status_code >= 400:
        message, restate_code = _error_message(response)
        rejected = RestateRejected(message, method, path, response.status_code, restate_code)
        logger.info("%s", rejected)  # redacted: Restate quotes the URL it called, credentials too
        raise rejected
    return response


def _call_when_sent(on_sent: Callable[[], None]) -> Callable[[str, dict[str, Any]], Any]:
    """An httpcore ``trace`` extension that calls ``on_sent`` when the request body is written."""

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event == "http11.send_request_body.complete":
            on_sent()

    return trace


async def ingress_health(http: httpx.AsyncClient, *, timeout: float | None = None) -> None:
    """``GET {ingress}/restate/health``: 200 with ``{"services": [...]}`` when ingress is up."""
    method, path = "GET", Routes.ingress_health
    response = await send(http, method, path, timeout=timeout)
    try:
        body = response.json()
    except ValueError as exc:
        raise RestateBadResponse("ingress health is not JSON", method, path, 200) from exc
    if not isinstance(body, dict) or not isinstance(body.get("services"), list):
        raise RestateBadResponse("ingress health has no services list", method, path, 200)
