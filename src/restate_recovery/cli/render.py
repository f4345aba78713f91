"""The CLI's tables, the same in both modes: it renders the route's JSON body (the readout, a
write's answer or plan), whether the operator API sent it or a local run made it."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

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
    table.add_row(
        "admin", _status(admin), _latency(admin), escape(f"version {admin.get('version')}")
    )
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
    console.print(table)
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
