"""The CLI's tables, the same in both modes: it renders the route's JSON body (the readout, a
write's answer or plan), whether the operator API sent it or a local run made it."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from restate_recovery.doctor.summary import NODE_COLUMNS, admin_detail, cluster_detail, node_row

COLOUR = {"ok": "green", "degraded": "yellow", "unreachable": "red"}


def _status(part: dict[str, Any]) -> str:
    value = str(part.get("status"))
    return f"[{COLOUR.get(value, 'white')}]{escape(value)}[/]"


def _latency(part: dict[str, Any]) -> str:
    value = part.get("latencyMs")
    return "" if value is None else f"{value:g}"


def render_readout(readout: dict[str, Any], console: Console | None = None) -> None:
    """The doctor's readout (the route's JSON) as tables."""
    console = console or Console()
    table = Table(title="Restate doctor", show_lines=False)
    for column in ("component", "status", "latency ms", "detail"):
        table.add_column(column)
    ingress, admin = readout["ingress"], readout["admin"]
    deployments, services = readout["deployments"], readout["services"]
    invocations = readout["invocations"]
    table.add_row("ingress", _status(ingress), _latency(ingress), "")
    table.add_row("admin", _status(admin), _latency(admin), escape(admin_detail(admin)))
    table.add_row(
        "deployments",
        _status(deployments),
        "",
        escape(
            deployments.get("error")
            or "\n".join(f"{d['id']}  {d['serviceUrl']}" for d in deployments["items"])
        ),
    )
    table.add_row(
        "services",
        _status(services),
        "",
        escape(
            services.get("error")
            or ", ".join(f"{s['name']} (rev {s.get('revision')})" for s in services["items"])
        ),
    )
    table.add_row(
        "invocations",
        _status(invocations),
        "",
        escape(
            invocations.get("error")
            or ", ".join(f"{k}: {v}" for k, v in invocations["byStatus"].items())
            or "none"
        ),
    )
    cluster = readout.get("cluster")
    if cluster is not None:
        table.add_row("cluster", _status(cluster), "", escape(cluster_detail(cluster)))
    console.print(table)
    if cluster is not None and cluster.get("nodes"):
        nodes = Table(title="Cluster nodes")
        for column in NODE_COLUMNS:
            nodes.add_column(column)
        for node in cluster["nodes"]:
            nodes.add_row(*(escape(v) for v in node_row(node)))
        console.print(nodes)
    failures = invocations.get("recentFailures") or []
    if failures:
        listing = Table(title="Recent failures (newest first)")
        for column in ("invocation", "service", "key", "status", "failed at"):
            listing.add_column(column, overflow="fold")
        listing.add_column("error", ratio=1)
        for f in failures:
            listing.add_row(
                *(
                    escape(str(f.get(name) or ""))
                    for name in (
                        "id",
                        "serviceName",
                        "serviceKey",
                        "status",
                        "failedAt",
                        "errorMessage",
                    )
                )
            )
        console.print(listing)


def render_write(name: str, body: dict[str, Any], console: Console | None = None) -> None:
    """A write's answer: the plan of a dry run, else the route's body."""
    console = console or Console()
    if body.get("dryRun"):
        console.print(f"[bold]{name}[/] dry run: nothing changed. Plan:")
        for step in body["plan"]:
            detail = f"  ({step['detail']})" if step.get("detail") else ""
            console.print(escape(f"  - {step['action']} {step['target']}{detail}"))
        return
    console.print(f"[green]{name}[/]: " + escape(json.dumps(body)))


def render_explanation(body: dict[str, Any], console: Console | None = None) -> None:
    """An invocation's story: one table row per invocation, its failure events, what to run."""
    console = console or Console()
    table = Table("invocation", "status", "retries", "last failure", "pinned", "modified")
    for story in body.get("invocations", []):
        failure = story.get("lastFailure") or story.get("completionFailure") or ""
        code = story.get("lastFailureErrorCode")
        table.add_row(
            escape(str(story.get("id"))),
            escape(str(story.get("status"))),
            escape(str(story.get("retryCount") if story.get("retryCount") is not None else "")),
            escape(f"[{code}] {failure}" if code else str(failure)),
            escape(str(story.get("pinnedDeploymentId") or "")),
            escape(str(story.get("modifiedAt") or "")),
        )
    console.print(table)
    for story in body.get("invocations", []):
        for event in story.get("journalFailures", [])[-3:]:
            line = f"  {story.get('id')} {event.get('appendedAt')} {event.get('eventType')}"
            line += f" [{event.get('errorCode')}] {event.get('message')}"
            console.print(escape(line))
    suggestion = body.get("suggestion") or {}
    if suggestion.get("runbook"):
        request = json.dumps(suggestion.get("request"))
        console.print(escape(f"run: {suggestion['runbook']} {request}"))
    console.print(escape(f"why: {suggestion.get('why', '')}"))
