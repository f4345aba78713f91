"""The process's Prometheus metrics (the official client), served by the operator API at
``GET /metrics``.

Per process (each API replica its own; sum them by instance): every attempt that finished its
audit row, by route and outcome, with its duration; audit rows the database did not take (begin)
or not yet (finish); doctor answers Prefect did not record; and the last readout this process
read: each component's status (1 for the status it has, 0 for the others) and its findings by
kind. A scrape that finds that readout older than ``READOUT_MAX_AGE_SECONDS`` (or none: nobody
called the doctor here; the scheduled doctor runs on a worker) first reads one (sharing a read
under way), so the gauges an alert rule watches are never older than that plus a probe. That
read answers nobody: it has no audit row and no Prefect run. Labels hold route names,
components, statuses and finding kinds only: never a URL, a key, an actor or a reason.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from restate_recovery.doctor.findings import Finding
    from restate_recovery.models import DoctorReadout

REGISTRY = CollectorRegistry(auto_describe=True)
STATUSES = ("ok", "degraded", "unreachable")
COMPONENTS = ("ingress", "admin", "deployments", "services", "invocations", "cluster")

ATTEMPTS = Counter(
    "restate_recovery_attempts",
    "Attempts whose audit row was finished, by route and outcome.",
    ["route", "outcome"],
    registry=REGISTRY,
)
ATTEMPT_SECONDS = Histogram(
    "restate_recovery_attempt_duration_seconds",
    "From an attempt's start to its audit row's finish, by route.",
    ["route"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
    registry=REGISTRY,
)
AUDIT_FAILURES = Counter(
    "restate_recovery_audit_failures",
    "Audit rows the database did not take: at the attempt's start (the attempt was refused) "
    "or at its finish (kept and finished once the database is back).",
    ["step"],
    registry=REGISTRY,
)
for _step in ("begin", "finish"):  # at 0 from the start, so that a rule on them has a series
    AUDIT_FAILURES.labels(step=_step)
RECORD_FAILURES = Counter(
    "restate_recovery_doctor_record_failures",
    "Doctor answers that Prefect did not record as a run (the answer was given all the same).",
    registry=REGISTRY,
)
COMPONENT = Gauge(
    "restate_recovery_doctor_component_status",
    "The last readout this process read (for an answer, or for a scrape when the last was "
    "older than 30 s): 1 for each component's status, 0 for the others.",
    ["component", "status"],
    registry=REGISTRY,
)
FINDINGS = Gauge(
    "restate_recovery_doctor_findings",
    "The last readout's findings (what the doctor's events say), by kind.",
    ["kind"],
    registry=REGISTRY,
)
LAST_READOUT = Gauge(
    "restate_recovery_doctor_last_readout_timestamp_seconds",
    "When this process last read a doctor readout (Unix time).",
    registry=REGISTRY,
)
DOCTOR_PROBES = Counter(
    "restate_recovery_doctor_readouts",
    "Readouts read (calls that came while one was read shared it).",
    registry=REGISTRY,
)


def attempt_finished(route: str, outcome: str, seconds: float) -> None:
    ATTEMPTS.labels(route=route, outcome=outcome).inc()
    ATTEMPT_SECONDS.labels(route=route).observe(max(0.0, seconds))


READOUT_MAX_AGE_SECONDS = 30.0
_last_read = 0.0  # time.monotonic() of the last readout_read


def readout_age() -> float | None:
    """Seconds since this process last read a readout, or None if it never did."""
    return time.monotonic() - _last_read if _last_read else None


def readout_read(readout: DoctorReadout, findings: list[Finding]) -> None:
    """Set the last readout's gauges (its findings as the doctor's events name them)."""
    global _last_read
    _last_read = time.monotonic()
    DOCTOR_PROBES.inc()
    parts = dict(readout.components())
    for component in COMPONENTS:
        part = parts.get(component)
        for status in STATUSES:
            value = 1.0 if part is not None and part.status == status else 0.0
            COMPONENT.labels(component=component, status=status).set(value)
    counts: dict[str, int] = {}
    for finding in findings:
        kind = finding.event.removeprefix("restate.doctor.")
        counts[kind] = counts.get(kind, 0) + 1
    FINDINGS.clear()
    for kind, n in counts.items():
        FINDINGS.labels(kind=kind).set(n)
    LAST_READOUT.set(time.time())


def exposition() -> bytes:
    """The metrics in Prometheus' text format."""
    return generate_latest(REGISTRY)
