"""The doctor's readout for people: the verdict line and the markdown artifact.

Everything rendered here may be stored by Prefect, so it is redacted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from restate_recovery.doctor.summary import NODE_COLUMNS, admin_detail, cluster_detail, node_row
from restate_recovery.models import AlertContext, DoctorReadout
from restate_recovery.redaction import redact_text

if TYPE_CHECKING:
    from restate_recovery.doctor.findings import Finding

ARTIFACT_KEY = "restate-doctor"
ARTIFACT_DESCRIPTION = "Restate doctor readout"


def unhealthy_components(readout: DoctorReadout) -> list[str]:
    return [name for name, part in readout.components() if part.status != "ok"]


def verdict(readout: DoctorReadout, findings: Sequence[Finding] = ()) -> str:
    """One line for the run (its log line and state message): ``all ok`` only when every
    component is ok and nothing maps to a runbook; else ``not ok: <components>`` and/or
    ``needs attention: <runbook> <target>`` (with its state when a plan already waits or the
    target is quiet)."""
    parts = []
    not_ok = unhealthy_components(readout)
    if not_ok:
        parts.append("not ok: " + ", ".join(not_ok))
    actionable = [f for f in findings if f.runbook]
    if actionable:
        parts.append(
            "needs attention: "
            + "; ".join(
                f"{f.runbook} {f.target}"
                + (f" ({f.state})" if f.state not in (None, "new") else "")
                for f in actionable
            )
        )
    return "; ".join(parts) or "all ok"


def cell(value: Any) -> str:
    """A markdown table cell: pipes escaped, one line."""
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def findings_markdown(findings: Sequence[Finding]) -> list[str]:
    """What the doctor found that a runbook fixes, with the exact parameters to run it with."""
    actionable = [f for f in findings if f.runbook]
    if not actionable:
        return []
    lines = [
        "## Needs attention",
        "",
        "| runbook | parameters | state | why |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {f.runbook} | `{cell(json.dumps(f.payload['request']))}` | {cell(f.state)} "
        f"| {cell(f.payload.get('reason'))} |"
        for f in actionable
    ]
    return [*lines, ""]


def readout_markdown(
    readout: DoctorReadout,
    findings: Sequence[Finding] = (),
    alert: AlertContext | None = None,
) -> str:
    """The readout as markdown tables (the Prefect artifact): the verdict, the alert that started
    this doctor (if one did), what needs attention, then each component."""
    lines = [f"# Restate doctor: {verdict(readout, findings)}", ""]
    if alert is not None:
        lines += [f"Started by {cell(alert.line())}", ""]
    lines += findings_markdown(findings)
    lines += [
        "| component | status | latency ms | detail |",
        "|---|---|---|---|",
        f"| ingress | {readout.ingress.status} | {cell(readout.ingress.latency_ms)} | |",
        f"| admin | {readout.admin.status} | {cell(readout.admin.latency_ms)} "
        f"| {cell(admin_detail(readout.admin.to_json()))} |",
        f"| deployments | {readout.deployments.status} | | "
        f"{len(readout.deployments.items)} registered {cell(readout.deployments.error)} |",
        f"| services | {readout.services.status} | | "
        f"{len(readout.services.items)} registered {cell(readout.services.error)} |",
        f"| invocations | {readout.invocations.status} | | "
        + cell(", ".join(f"{k}: {v}" for k, v in readout.invocations.by_status.items()))
        + f" {cell(readout.invocations.error)} |",
    ]
    if readout.cluster is not None:
        cluster = readout.cluster.to_json()
        head, *problems = cluster_detail(cluster).split("\n")
        lines.append(f"| cluster | {readout.cluster.status} | | {cell(head)} |")
        if readout.cluster.nodes:
            lines += ["", "## Cluster", ""]
            lines += [f"- {p}" for p in problems] + ([""] if problems else [])
            lines += ["| " + " | ".join(NODE_COLUMNS) + " |", "|---" * len(NODE_COLUMNS) + "|"]
            lines += [
                "| " + " | ".join(cell(v) for v in node_row(n)) + " |" for n in cluster["nodes"]
            ]
        elif problems:
            lines += ["", *(f"- cluster: {p}" for p in problems)]
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
