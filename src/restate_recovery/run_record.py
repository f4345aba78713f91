"""Answered doctor readouts recorded in Prefect as ``restate-doctor`` flow runs, over its REST API.

The operator API and the CLI probe once and answer at once. What is left is to put exactly that
readout in Prefect's run history, the way a ``restate-doctor`` run of the engine shows it: a flow
run named ``restate-doctor`` (Running, then Completed; Failed with the error when the admin URL was
unusable), the readout as its ``restate-doctor`` markdown artifact, its log lines, and one event
per finding, related to the run, for the automations. That is six requests in three round trips,
about 0.2 s.
Running the flow for it cost the CLI an import of Prefect (about 2 s on these machines) and the
engine's own work (about 1 s), after the answer (docs/performance.md).

The connection is Prefect's own client settings (URL, auth string or API key, TLS, custom
headers, retries), read where Prefect reads them without importing it (``prefect_settings``); where
only Prefect can read them, or they name no server, through Prefect (about 1 s of import), and with
no URL there either Prefect's temporary server is started, as a flow run would.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import os
import random
import ssl
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import certifi
import httpx

from restate_recovery import prefect_settings
from restate_recovery.doctor import AnsweredReadout, readout_markdown, verdict
from restate_recovery.findings import Finding, doctor_findings
from restate_recovery.prefect_settings import DEFAULT_MAX_RETRIES, ConnectionSettings
from restate_recovery.urls import redact_url

logger = logging.getLogger(__name__)

FLOW_NAME = "restate-doctor"
ARTIFACT_KEY = "restate-doctor"
ARTIFACT_DESCRIPTION = "Restate doctor readout"
LOGGER_NAME = "prefect.flow_runs"  # the logger of a flow run's own lines in the UI
REQUEST_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# Retried as Prefect's own client retries them (``prefect.client.base``): these statuses (a busy
# SQLite-backed server answers 503) and transport errors, after 2, 4, 8, ... s (±20 %) or the
# server's Retry-After, up to ``PREFECT_CLIENT_MAX_RETRIES`` times (default 5); a refused
# connection only once the server has answered before, so a wrong or down server fails at once.
RETRY_STATUSES = frozenset({408, 429, 502, 503})  # plus PREFECT_CLIENT_RETRY_EXTRA_CODES
RETRY_ERRORS: tuple[type[Exception], ...] = (
    httpx.ReadTimeout,
    httpx.PoolTimeout,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.LocalProtocolError,
)
BACKOFF_BASE_SECONDS = 2.0
MAX_RETRY_AFTER_SECONDS = 60.0
_jitter = random.Random()  # not the global generator: tests and libraries share that one


class RecordError(Exception):
    """Prefect did not take (all of) the record. ``flow_run_id`` is set when the run exists."""

    def __init__(self, message: str, flow_run_id: str | None = None) -> None:
        super().__init__(message, flow_run_id)
        self.flow_run_id = flow_run_id

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class PrefectConnection:
    """Where Prefect's API is and how to talk to it (Prefect's own client settings)."""

    api_url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    verify: ssl.SSLContext | bool = True
    max_retries: int = DEFAULT_MAX_RETRIES
    transport: httpx.AsyncBaseTransport | None = None  # tests put faults here
    retry_statuses: frozenset[int] = RETRY_STATUSES

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.api_url.rstrip("/") + "/",
            headers=dict(self.headers),
            verify=self.verify,
            timeout=REQUEST_TIMEOUT,
            transport=self.transport,
        )


# Headers Prefect's client keeps for itself, whatever PREFECT_CLIENT_CUSTOM_HEADERS says.
PROTECTED_HEADERS = {"user-agent", "prefect-csrf-token", "prefect-csrf-client"}


def connection(settings: ConnectionSettings, api_url: str | None = None) -> PrefectConnection:
    """The connection Prefect's client makes with these settings: the auth string before the
    key, then the custom headers (a custom Authorization wins, as in Prefect's client)."""
    headers: dict[str, str] = {}
    if settings.auth_string:
        token = base64.b64encode(settings.auth_string.encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    elif settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    for name, value in settings.custom_headers.items():
        if name.lower() not in PROTECTED_HEADERS:
            headers = {k: v for k, v in headers.items() if k.lower() != name.lower()}
            headers[name] = value
    verify: ssl.SSLContext | bool = False  # PREFECT_API_TLS_INSECURE_SKIP_VERIFY
    if not settings.tls_insecure_skip_verify:  # Prefect's CA file, else certifi's
        verify = ssl.create_default_context(cafile=settings.ssl_cert_file or certifi.where())
    return PrefectConnection(
        api_url or settings.api_url or "",
        headers,
        verify,
        settings.max_retries,
        retry_statuses=RETRY_STATUSES | settings.retry_extra_codes,
    )


def connection_from_settings(
    environ: Mapping[str, str] = os.environ, cwd: Path | None = None
) -> PrefectConnection | None:
    """The connection from Prefect's client settings read without Prefect; None when they name
    no server or only Prefect can read them (then ``connection_from_prefect``)."""
    settings = prefect_settings.read(environ, cwd)
    if settings is None or not settings.api_url:
        return None
    return connection(settings)


def connection_from_prefect() -> PrefectConnection:
    """Prefect's own settings; with no API URL there, its temporary server, started here (it
    stops when the process exits). Imports Prefect: about a second, so only when needed."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    api_url = settings.api.url
    if not api_url:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start(timeout=settings.server.ephemeral.startup_timeout_seconds)
        api_url = server.api_url
    return connection(ConnectionSettings.of(settings), api_url)


@dataclass(frozen=True)
class RunRecord:
    """Everything a recorded doctor run holds, decided before anything is sent."""

    tags: list[str]
    log_lines: list[str]
    artifact_markdown: str | None
    findings: list[Finding]
    final_state: dict[str, Any]


def doctor_run_record(
    answered: AnsweredReadout, *, source: str, actor: str, service_url: str | None
) -> RunRecord:
    """What the run of an answered readout holds: the same artifact, findings and verdict as a
    ``restate-doctor`` run the engine ran, plus who was answered (Prefect has no users)."""
    asked = f"actor {actor}" + (f", request {answered.request_id}" if answered.request_id else "")
    lines = [f"readout answered through the {source} ({asked}), recorded as answered"]
    if answered.error is not None:
        message = f"{answered.error.code}: {answered.error.message}"
        lines.append(f"doctor: {message}")
        state = {"type": "FAILED", "name": "Failed", "message": message}
        return RunRecord([f"via:{source}"], lines, None, [], state)
    readout = answered.unwrap()
    findings = doctor_findings(readout, service_url)
    lines += [f"event {f.event} for {f.resource['prefect.resource.id']}" for f in findings]
    lines.append(f"doctor: {verdict(readout)}")
    state = {"type": "COMPLETED", "name": "Completed"}
    return RunRecord([f"via:{source}"], lines, readout_markdown(readout), findings, state)


def _retry_after(response: httpx.Response) -> float | None:
    """The server's Retry-After in seconds (bounded), or None."""
    try:
        seconds = float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS) if math.isfinite(seconds) else None


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, RecordError) else f"{type(exc).__name__}: {exc}"


class RunRecorder:
    """Records answered readouts as ``restate-doctor`` flow runs; keeps one client to Prefect."""

    def __init__(self, connection: PrefectConnection | None = None) -> None:
        self._connection = connection
        self._http: httpx.AsyncClient | None = None
        self._flow_id: str | None = None
        self._connected = False  # Prefect has answered once
        self._csrf: dict[str, str] = {}
        self._opening = asyncio.Lock()

    async def _client(self) -> httpx.AsyncClient:
        async with self._opening:  # records at once must not start two temporary servers
            if self._http is None:
                found = self._connection or connection_from_settings()
                if found is None:
                    found = await asyncio.to_thread(connection_from_prefect)
                self._connection = found
                self._http = found.client()
            return self._http

    async def _post(self, http: httpx.AsyncClient, path: str, body: Any) -> Any:
        assert self._connection is not None  # set by _client(), which gave us http
        max_retries, retry_statuses = self._connection.max_retries, self._connection.retry_statuses
        tries, csrf_renewed = 0, False
        while True:
            retry_errors = RETRY_ERRORS + ((httpx.ConnectError,) if self._connected else ())
            try:
                response = await http.post(path, json=body, headers=self._csrf)
            except retry_errors as exc:
                why = type(exc).__name__
                tries += 1
                if tries > max_retries:
                    raise
                delay = None
            else:
                self._connected = True
                if (
                    response.status_code == 403
                    and "CSRF token" in response.text
                    and not csrf_renewed
                ):
                    csrf_renewed = await self._renew_csrf(http)
                    if csrf_renewed:
                        continue
                if response.status_code not in retry_statuses or tries >= max_retries:
                    response.raise_for_status()
                    return response.json() if response.content else None
                tries += 1
                why = f"answered {response.status_code}"
                delay = _retry_after(response)
            if delay is None:
                delay = BACKOFF_BASE_SECONDS**tries * _jitter.uniform(0.8, 1.2)
            logger.debug("Prefect: %s %s, asked again in %.1f s", path, why, delay)
            await asyncio.sleep(delay)

    async def _renew_csrf(self, http: httpx.AsyncClient) -> bool:
        """A server with CSRF protection on wants a token with each write (as Prefect's client
        sends it). False when it hands none out."""
        client_id = str(uuid.uuid4())
        response = await http.get("csrf-token", params={"client": client_id})
        if response.status_code != 200:
            return False
        self._csrf = {
            "Prefect-Csrf-Token": response.json()["token"],
            "Prefect-Csrf-Client": client_id,
        }
        return True

    async def record(self, record: RunRecord) -> str:
        """Create the run and fill it; returns its id. Raises ``RecordError``."""
        try:
            http = await self._client()
            if self._flow_id is None:  # Prefect creates the flow, or returns the existing one
                self._flow_id = (await self._post(http, "flows/", {"name": FLOW_NAME}))["id"]
            created = await self._post(
                http,
                "flow_runs/",
                {
                    "flow_id": self._flow_id,
                    "name": FLOW_NAME,
                    "parameters": {},
                    "tags": record.tags,
                    "idempotency_key": uuid.uuid4().hex,  # a retried create is one run
                    "state": {"type": "RUNNING", "name": "Running"},
                },
            )
            run_id: str = created["id"]
        except Exception as exc:
            raise RecordError(redact_url(f"no flow run was created: {_describe(exc)}")) from None
        try:
            await self._fill(http, run_id, record)
        except Exception as exc:
            await self._mark_crashed(http, run_id)
            message = f"flow run {run_id} was not fully recorded: {_describe(exc)}"
            raise RecordError(redact_url(message), run_id) from None
        return run_id

    async def _fill(self, http: httpx.AsyncClient, run_id: str, record: RunRecord) -> None:
        started = datetime.now(UTC)
        now = started.isoformat()
        related = [
            {
                "prefect.resource.id": f"prefect.flow-run.{run_id}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": FLOW_NAME,
            },
            {
                "prefect.resource.id": f"prefect.flow.{self._flow_id}",
                "prefect.resource.role": "flow",
                "prefect.resource.name": FLOW_NAME,
            },
        ]
        logs = [
            {
                "name": LOGGER_NAME,
                "level": logging.INFO,
                "message": line,
                "timestamp": (started + timedelta(microseconds=n)).isoformat(),  # in order
                "flow_run_id": run_id,
            }
            for n, line in enumerate(record.log_lines)
        ]
        # All at once: the run exists, and Prefect orders its log lines by their timestamps.
        writes = [self._post(http, "logs/", logs)]
        if record.artifact_markdown is not None:
            artifact = {
                "key": ARTIFACT_KEY,
                "type": "markdown",
                "description": ARTIFACT_DESCRIPTION,
                "data": record.artifact_markdown,
                "flow_run_id": run_id,
            }
            writes.append(self._post(http, "artifacts/", artifact))
        if record.findings:
            events = [
                {
                    "id": str(uuid.uuid4()),
                    "occurred": now,
                    "event": finding.event,
                    "resource": finding.resource,
                    "related": related,
                    "payload": finding.payload,
                }
                for finding in record.findings
            ]
            writes.append(self._post(http, "events", events))
        results = await asyncio.gather(
            self._post(http, f"flow_runs/{run_id}/set_state", {"state": record.final_state}),
            *writes,
            return_exceptions=True,  # every request has ended before the run may be marked
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        final: dict[str, Any] = results[0]  # type: ignore[assignment]
        if final["status"] != "ACCEPT":
            raise RecordError(f"Prefect did not accept the final state: {final['status']}")

    async def _mark_crashed(self, http: httpx.AsyncClient, run_id: str) -> None:
        """Best effort: a run left Running would look like a doctor still at work."""
        state = {"type": "CRASHED", "name": "Crashed", "message": "the record was cut short"}
        body = {"state": state, "force": True}
        try:
            await http.post(f"flow_runs/{run_id}/set_state", json=body, headers=self._csrf)
        except Exception:  # noqa: BLE001 - best effort; the RecordError says what happened
            logger.debug("flow run %s could not be marked crashed", run_id)

    async def aclose(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()
