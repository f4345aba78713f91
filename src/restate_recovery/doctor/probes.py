"""The doctor: a read-only readout of ingress, admin API, deployments, services and invocations.

Each probe is bounded by its own timeout and never raises for a Restate failure: it marks its own
component ``unreachable`` (no answer: refused, reset, timed out) or ``degraded`` (an error status
or a payload of the wrong shape). The only error is an admin URL that cannot be resolved.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol, TypeVar

import httpx

from restate_recovery.client import RestateAdminClient, ingress_health, tls_context
from restate_recovery.doctor import cluster
from restate_recovery.errors import AdminUnreachableError, RestateRejected, RestateUnreachable
from restate_recovery.models import (
    AdminReadout,
    ClusterReadout,
    ComponentStatus,
    DeploymentItem,
    DeploymentsReadout,
    DoctorReadout,
    IngressReadout,
    InvocationFailure,
    InvocationsReadout,
    ServiceItem,
    ServicesReadout,
    iso_utc,
)
from restate_recovery.redaction import shown_url
from restate_recovery.schemas import absolute_http_url
from restate_recovery.settings import Settings
from restate_recovery.sql import invocation_id_literal

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_RECENT_FAILURES = 20
MAX_ERROR_MESSAGE = 500

COUNT_BY_STATUS_SQL = "SELECT status, count(*) AS n FROM sys_invocation GROUP BY status"
RECENT_FAILURES_SQL = (
    "SELECT id, target_service_name, target_service_key, status, completion_failure, "
    "last_failure, modified_at, completed_at FROM sys_invocation "
    "WHERE (status = 'completed' AND completion_result = 'failure') "
    "OR status IN ('backing-off', 'paused') "
    f"ORDER BY modified_at DESC LIMIT {MAX_RECENT_FAILURES}"
)
INVOCATION_QUERIES = (COUNT_BY_STATUS_SQL, RECENT_FAILURES_SQL)


def paused_errors_sql(invocation_ids: list[str]) -> str:
    ids = ", ".join(invocation_id_literal(i) for i in invocation_ids)
    return (
        "SELECT id, appended_at, event_json FROM sys_journal_events "
        f"WHERE event_type = 'Paused' AND id IN ({ids})"
    )


@dataclass(frozen=True)
class Endpoints:
    """Where the doctor looks. URLs may carry credentials: never log them.

    ``admin_urls`` are the configured admin APIs in order (the nodes of a cluster, say); the
    first is the one in use (``admin_url``) and ``choose_admin`` puts the first that answers
    there."""

    admin_urls: tuple[str, ...]
    ingress_url: str | None
    probe_timeout: float
    unanswered: tuple[str, ...] = ()  # admin URLs before the one in use that did not answer
    node_urls: tuple[str, ...] = ()  # RESTATE_NODE_URLS: the cluster readout reads through them
    node_urls_error: str | None = None  # why RESTATE_NODE_URLS could not be used
    restatectl_bin: str | None = None

    @property
    def admin_url(self) -> str:
        return self.admin_urls[0]


def _valid_base_url(value: str | None) -> str | None:
    """A configured URL, checked as a request's service URL is (``absolute_http_url``)."""
    if value is None or not value.strip():
        return None
    try:
        return str(httpx.URL(absolute_http_url(value.strip())))
    except ValueError:
        return None


def resolve_endpoints(settings: Settings) -> Endpoints:
    """The URLs to probe. ``RESTATE_ADMIN_URL`` may list several admin APIs, comma-separated.
    Raises ``AdminUnreachableError`` when it is unset or one of them is invalid."""
    if settings.restate_admin_url is None or not settings.restate_admin_url.strip():
        raise AdminUnreachableError("RESTATE_ADMIN_URL is not set")
    admin_urls = []
    listed = [u for u in settings.restate_admin_url.split(",") if u.strip()]
    for position, value in enumerate(listed, start=1):
        admin_url = _valid_base_url(value)
        if admin_url is None:
            which = f" (URL {position} of {len(listed)})" if len(listed) > 1 else ""
            raise AdminUnreachableError(
                f"RESTATE_ADMIN_URL is not a valid absolute http(s) URL{which}"
            )
        admin_urls.append(admin_url)
    node_urls: list[str] = []
    node_urls_error = None
    listed = [u for u in (settings.restate_node_urls or "").split(",") if u.strip()]
    for position, value in enumerate(listed, start=1):
        node_url = _valid_base_url(value)
        if node_url is None:
            node_urls_error = f"RESTATE_NODE_URLS: URL {position} of {len(listed)} is not valid"
            break
        node_urls.append(node_url)
    return Endpoints(
        admin_urls=tuple(admin_urls),
        ingress_url=_valid_base_url(settings.restate_ingress_url),
        probe_timeout=settings.recovery_probe_timeout_seconds,
        node_urls=tuple(node_urls),
        node_urls_error=node_urls_error,
        restatectl_bin=settings.restatectl_bin,
    )


# How long each admin URL but the last gets to answer ``GET /health`` before the next is tried.
CHOOSE_TIMEOUT_SECONDS = 1.0


async def choose_admin(
    endpoints: Endpoints, transport: httpx.AsyncBaseTransport | None = None
) -> Endpoints:
    """The endpoints with the first admin URL whose ``GET /health`` answers 2xx in use. With one
    URL, or when none answers, they are returned as they are (the probes then report it)."""
    if len(endpoints.admin_urls) < 2:
        return endpoints
    timeout = min(CHOOSE_TIMEOUT_SECONDS, endpoints.probe_timeout)
    for index, url in enumerate(endpoints.admin_urls):
        client = RestateAdminClient.connect(url, timeout=timeout, transport=transport)
        try:
            async with client:
                await _bounded(timeout, partial(client.health, timeout=timeout))
        except (TimeoutError, RestateUnreachable, RestateRejected):
            continue  # no answer, or an error status (a load balancer's 502: its node is down)
        if index == 0:
            return endpoints
        ordered = (url, *endpoints.admin_urls[:index], *endpoints.admin_urls[index + 1 :])
        skipped = tuple(shown_url(u) for u in endpoints.admin_urls[:index])
        logger.warning("admin: using URL %d of %d (%s did not answer)", index + 1,
                       len(endpoints.admin_urls), ", ".join(skipped))  # fmt: skip
        return replace(endpoints, admin_urls=ordered, unanswered=skipped)
    return endpoints


# --- helpers ------------------------------------------------------------------------------------


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def failure_verdict(exc: BaseException, timeout: float) -> tuple[ComponentStatus, str]:
    """What a probe failure means for its component: (status, human-readable reason)."""
    if isinstance(exc, TimeoutError):
        return "unreachable", f"no answer within {timeout:g} s"
    if isinstance(exc, RestateUnreachable):
        return "unreachable", str(exc)
    if isinstance(exc, RestateRejected):
        return "degraded", str(exc)
    raise exc


async def _bounded(timeout: float, call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call`` under a hard bound (the HTTP timeout alone does not bound every phase)."""
    async with asyncio.timeout(timeout):
        return await call()


def _first_line(text: Any) -> str | None:
    if not isinstance(text, str) or not text:
        return None
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:MAX_ERROR_MESSAGE] or None


# --- the five probes ----------------------------------------------------------------------------


async def probe_ingress(http: httpx.AsyncClient | None, timeout: float) -> IngressReadout:
    if http is None:
        logger.warning("ingress: RESTATE_INGRESS_URL is not set or not a valid http(s) URL")
        return IngressReadout(status="unreachable", latency_ms=None)
    started = time.perf_counter()
    try:
        await _bounded(timeout, lambda: ingress_health(http, timeout=timeout))
    except (TimeoutError, RestateUnreachable, RestateRejected) as exc:
        status, reason = failure_verdict(exc, timeout)
        logger.warning("ingress %s: %s", status, reason)
        latency = _elapsed_ms(started) if status == "degraded" else None
        return IngressReadout(status=status, latency_ms=latency)
    return IngressReadout(status="ok", latency_ms=_elapsed_ms(started))


async def probe_admin(client: RestateAdminClient, timeout: float) -> AdminReadout:
    started = time.perf_counter()
    latency: float | None = None

    async def health_then_version() -> str:
        nonlocal latency
        try:
            await client.health(timeout=timeout)
        finally:
            latency = _elapsed_ms(started)
        return (await client.version(timeout=timeout)).version

    try:
        version = await _bounded(timeout, health_then_version)
    except (TimeoutError, RestateUnreachable, RestateRejected) as exc:
        status, reason = failure_verdict(exc, timeout)
        logger.warning("admin %s: %s", status, reason)
        return AdminReadout(
            status=status, latency_ms=latency if status == "degraded" else None, version=None
        )
    return AdminReadout(status="ok", latency_ms=latency, version=version)


async def probe_deployments(client: RestateAdminClient, timeout: float) -> DeploymentsReadout:
    try:
        deployments = await _bounded(timeout, lambda: client.list_deployments(timeout=timeout))
    except (TimeoutError, RestateUnreachable, RestateRejected) as exc:
        status, reason = failure_verdict(exc, timeout)
        return DeploymentsReadout(status=status, items=[], error=reason)
    items = [
        DeploymentItem(id=d.id, service_url=d.service_url, created_at=iso_utc(d.created_at))
        for d in deployments
    ]
    return DeploymentsReadout(status="ok", items=items, error=None)


async def probe_services(client: RestateAdminClient, timeout: float) -> ServicesReadout:
    try:
        services = await _bounded(timeout, lambda: client.list_services(timeout=timeout))
    except (TimeoutError, RestateUnreachable, RestateRejected) as exc:
        status, reason = failure_verdict(exc, timeout)
        return ServicesReadout(status=status, items=[], error=reason)
    items = [ServiceItem(name=s.name, revision=s.revision) for s in services]
    return ServicesReadout(status="ok", items=items, error=None)


class UnexpectedRows(ValueError):
    """Rows of a /query answer that do not have the columns the doctor asked for."""


def count_by_status(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        status, n = row.get("status"), row.get("n")
        if not isinstance(status, str) or not isinstance(n, int) or isinstance(n, bool):
            raise UnexpectedRows(f"count row without status/n: {sorted(row)}")
        counts[status] = n
    return dict(sorted(counts.items()))


def paused_error_messages(rows: list[dict[str, Any]]) -> dict[str, str]:
    """The last ``Paused`` journal event's error message, per invocation id."""
    latest: dict[str, tuple[str, str]] = {}
    for row in rows:
        invocation_id, appended = row.get("id"), str(row.get("appended_at", ""))
        try:
            event = json.loads(row.get("event_json") or "{}")
        except ValueError:
            continue
        failure = event.get("last_failure") if isinstance(event, dict) else None
        message = failure.get("error_message") if isinstance(failure, dict) else None
        if isinstance(invocation_id, str) and isinstance(message, str):
            if invocation_id not in latest or appended >= latest[invocation_id][0]:
                latest[invocation_id] = (appended, message)
    return {k: v[1] for k, v in latest.items()}


def failures_from_rows(
    rows: list[dict[str, Any]], paused_errors: dict[str, str]
) -> list[InvocationFailure]:
    failures: list[InvocationFailure] = []
    for row in rows:
        invocation_id, status = row.get("id"), row.get("status")
        if not isinstance(invocation_id, str) or not isinstance(status, str):
            raise UnexpectedRows(f"failure row without id/status: {sorted(row)}")
        if status == "completed":
            message, failed_at = row.get("completion_failure"), row.get("completed_at")
        else:
            message = row.get("last_failure") or paused_errors.get(invocation_id)
            failed_at = row.get("modified_at")
        failures.append(
            InvocationFailure(
                id=invocation_id,
                service_name=row.get("target_service_name"),
                service_key=row.get("target_service_key") or None,
                failed_at=iso_utc(failed_at or row.get("modified_at")),
                error_message=_first_line(message),
                status=status,
            )
        )
    failures.sort(key=lambda f: f.failed_at or "", reverse=True)
    return failures[:MAX_RECENT_FAILURES]


async def probe_invocations(
    client: RestateAdminClient, timeout: float, on_sent: Callable[[], None] | None = None
) -> InvocationsReadout:
    """Counts by status and recent failures: two queries at once, both aggregated or limited
    inside Restate. ``on_sent`` is called once both are on the wire."""
    written = 0

    def one_written() -> None:
        nonlocal written
        written += 1
        if written == len(INVOCATION_QUERIES) and on_sent is not None:
            on_sent()

    async def read() -> InvocationsReadout:
        counts_rows, failure_rows = await asyncio.gather(
            *(client.query(sql, timeout=timeout, on_sent=one_written) for sql in INVOCATION_QUERIES)
        )
        paused = [r["id"] for r in failure_rows if r.get("status") == "paused" and "id" in r]
        paused_errors: dict[str, str] = {}
        if paused:
            paused_errors = paused_error_messages(
                await client.query(paused_errors_sql(paused), timeout=timeout)
            )
        return InvocationsReadout(
            status="ok",
            by_status=count_by_status(counts_rows),
            recent_failures=failures_from_rows(failure_rows, paused_errors),
            error=None,
        )

    try:
        return await _bounded(timeout, read)
    except UnexpectedRows as exc:
        return InvocationsReadout(status="degraded", error=f"unexpected /query rows: {exc}")
    except (TimeoutError, RestateUnreachable, RestateRejected) as exc:
        status, reason = failure_verdict(exc, timeout)
        return InvocationsReadout(status=status, error=reason)


def wants_cluster(endpoints: Endpoints) -> bool:
    """Whether RESTATE_NODE_URLS is set (without it the readout has the spec's five only)."""
    return bool(endpoints.node_urls) or endpoints.node_urls_error is not None


async def _none() -> None:
    return None


async def probe_cluster(endpoints: Endpoints) -> ClusterReadout | None:
    """The cluster readout when RESTATE_NODE_URLS is set; else none."""
    if endpoints.node_urls_error is not None:
        return ClusterReadout(status="degraded", error=endpoints.node_urls_error)
    if not endpoints.node_urls:
        return None
    readout = await cluster.probe_cluster(
        endpoints.node_urls, endpoints.probe_timeout, endpoints.restatectl_bin
    )
    if readout.status != "ok":
        logger.warning("cluster %s: %s", readout.status,
                       readout.error or "; ".join(p.detail for p in readout.problems))  # fmt: skip
    return readout


# --- the whole readout --------------------------------------------------------------------------


# How long the probes' idle connections are kept for the next doctor call. httpx's default is
# 5 s; an operator in an incident asks again within seconds to a minute, and each reconnect costs
# this process's CPU while Restate runs its query (1k invocations: 1.30 against 1.10 times the raw
# floor, docs/performance.md). Kept below the idle timeouts of the proxies and load balancers that
# may sit in front of Restate (60 s and more), so that none of them closes a connection just as it
# is used again; restate-server itself kept idle connections open for 150 s and more.
KEEPALIVE_SECONDS = 30.0
PROBE_LIMITS = httpx.Limits(
    max_connections=100, max_keepalive_connections=20, keepalive_expiry=KEEPALIVE_SECONDS
)


def open_admin(
    endpoints: Endpoints, transport: httpx.AsyncBaseTransport | None = None
) -> RestateAdminClient:
    return RestateAdminClient.connect(
        endpoints.admin_url,
        timeout=endpoints.probe_timeout,
        transport=transport,
        limits=PROBE_LIMITS,
    )


def open_ingress(
    endpoints: Endpoints, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient | None:
    if endpoints.ingress_url is None:
        return None
    return httpx.AsyncClient(
        base_url=endpoints.ingress_url.rstrip("/"),
        timeout=httpx.Timeout(endpoints.probe_timeout),
        transport=transport,
        verify=tls_context(),
        limits=PROBE_LIMITS,
    )


class ProbeClients:
    """The doctor's HTTP clients, kept open between calls by a long-lived caller (the operator
    API, on its one event loop): the small probes then reuse keep-alive connections (idle ones
    for ``KEEPALIVE_SECONDS``). ``/query`` always goes out on a fresh connection
    (``connection: close``).
    """

    def __init__(
        self,
        endpoints: Endpoints,
        *,
        admin_transport: httpx.AsyncBaseTransport | None = None,
        ingress_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.admin = open_admin(endpoints, admin_transport)
        self.ingress = open_ingress(endpoints, ingress_transport)

    async def aclose(self) -> None:
        try:
            await self.admin.aclose()
        finally:
            if self.ingress is not None:
                await self.ingress.aclose()


class InvocationsProbe(Protocol):
    def __call__(
        self, client: RestateAdminClient, timeout: float, on_sent: Callable[[], None] | None = None
    ) -> Awaitable[InvocationsReadout]: ...


@dataclass(frozen=True)
class ProbeSet:
    """The five probes. The Prefect flow swaps in its task wrappers; the library uses these."""

    ingress: Callable[[httpx.AsyncClient | None, float], Awaitable[IngressReadout]] = probe_ingress
    admin: Callable[[RestateAdminClient, float], Awaitable[AdminReadout]] = probe_admin
    deployments: Callable[[RestateAdminClient, float], Awaitable[DeploymentsReadout]] = (
        probe_deployments
    )
    services: Callable[[RestateAdminClient, float], Awaitable[ServicesReadout]] = probe_services
    invocations: InvocationsProbe = probe_invocations
    cluster: Callable[[Endpoints], Awaitable[ClusterReadout | None]] = probe_cluster


# How long the small probes wait for the invocation queries to be on the wire before they start
# anyway (a connect that hangs must not delay them by a whole probe timeout).
QUERIES_HEAD_START_SECONDS = 0.1


async def run_doctor(
    endpoints: Endpoints,
    *,
    probes: ProbeSet = ProbeSet(),  # noqa: B008 - frozen, stateless
    clients: ProbeClients | None = None,
    admin_transport: httpx.AsyncBaseTransport | None = None,
    ingress_transport: httpx.AsyncBaseTransport | None = None,
) -> DoctorReadout:
    """The doctor as a plain library call: the five probes, concurrently, with the slowest (the
    invocation table's queries) sent first. The four small probes start once those queries are on
    the wire, so their work on this process's CPU overlaps Restate's query time instead of
    delaying the queries. ``clients`` are used and left open; without them the call opens its own.
    """
    own = clients is None
    if clients is None:
        endpoints = await choose_admin(endpoints, admin_transport)
        clients = ProbeClients(
            endpoints, admin_transport=admin_transport, ingress_transport=ingress_transport
        )
    endpoints = clients.endpoints
    admin, ingress, timeout = clients.admin, clients.ingress, endpoints.probe_timeout
    on_wire = asyncio.Event()
    invocations = asyncio.ensure_future(probes.invocations(admin, timeout, on_wire.set))
    try:
        head_start = asyncio.ensure_future(on_wire.wait())
        await asyncio.wait(
            {invocations, head_start},
            timeout=QUERIES_HEAD_START_SECONDS,
            return_when=asyncio.FIRST_COMPLETED,
        )
        head_start.cancel()
        ingress_r, admin_r, deployments_r, services_r, cluster_r = await asyncio.gather(
            probes.ingress(ingress, timeout),
            probes.admin(admin, timeout),
            probes.deployments(admin, timeout),
            probes.services(admin, timeout),
            probes.cluster(endpoints) if wants_cluster(endpoints) else _none(),
        )
        invocations_r = await invocations
    finally:
        invocations.cancel()  # a no-op once it is done
        if own:
            await clients.aclose()
    if len(endpoints.admin_urls) > 1:  # say which was used
        admin_r = admin_r.model_copy(
            update={"url": shown_url(endpoints.admin_url), "unanswered": list(endpoints.unanswered)}
        )
    return DoctorReadout(
        cluster=cluster_r,
        ingress=ingress_r,
        admin=admin_r,
        deployments=deployments_r,
        services=services_r,
        invocations=invocations_r,
    )
