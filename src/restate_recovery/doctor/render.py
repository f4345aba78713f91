"""The doctor's readout for people: the verdict line and the markdown artifact.

Everything rendered here may be stored by Prefect, so it is redacted.
"""

from __future__ import annotations

from typing import Any

from restate_recovery.models import DoctorReadout
from restate_recovery.redaction import redact_text

ARTIFACT_KEY = "restate-doctor"
ARTIFACT_DESCRIPTION = "Restate doctor readout"


def unhealthy_components(readout: DoctorReadout) -> list[str]:
    return [name for name, part in readout if getattr(part, "status", "ok") != "ok"]


def verdict(readout: DoctorReadout) -> str:
    """One line for the run's log: ``all ok`` or ``not ok: <components>``."""
    not_ok = unhealthy_components(readout)
    return "not ok: " + ", ".join(not_ok) if not_ok else "all ok"


def cell(value: Any) -> str:
    """A markdown table cell: pipes escaped, one line."""
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def readout_markdown(readout: DoctorReadout) -> str:
    """The readout as markdown tables (the Prefect artifact)."""
    lines = [
        "# Restate doctor",
        "",
        "| component | status | latency ms | detail |",
        "|---|---|---|---|",
        f"| ingress | {readout.ingress.status} | {cell(readout.ingress.latency_ms)} | |",
        f"| admin | {readout.admin.status} | {cell(readout.admin.latency_ms)} "
        f"| version {cell(readout.admin.version)} |",
        f"| deployments | {readout.deployments.status} | | "
        f"{len(readout.deployments.items)} registered {cell(readout.deployments.error)} |",
        f"| services | {readout.services.status} | | "
        f"{len(readout.services.items)} registered {cell(readout.services.error)} |",
        f"| invocations | {readout.invocations.status} | | "
        + cell(", ".join(f"{k}: {v}" for k, v in readout.invocations.by_status.items()))
        + f" {cell(readout.invocations.error)} |",
    ]
    if readout.deployments.items:
        lines += ["", "## Deployments", "", "| id | service URL | created |", "|---|---|---|"]
        lines += [
            f"| {cell(d.id)} | {cell(d.service_url)} | {cell(d.created_at)} |"
            for d in readout.deployments.items
        ]
    if readout.invocations.recent_failures:
        lines += [
            "",
            "## Recent failures",
            "",
            "| invocation | service | key | status | failed at | error |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {cell(f.id)} | {cell(f.service_name)} | {cell(f.service_key)} | {f.status} "
            f"| {cell(f.failed_at)} | {cell(f.error_message)} |"
            for f in readout.invocations.recent_failures
        ]
    return redact_text("\n".join(lines) + "\n")  # it is stored by Prefect: no credentials
