"""The operator CLI: ``restate-recovery``.

Every command runs the same Prefect flow as the API and the deployments. ``--json`` prints exactly
the route's response body on stdout (or the error body ``{"code", "message"}`` with a non-zero
exit); Prefect's own logs go to stderr.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from restate_recovery import prefect_env
from restate_recovery.credentials import forget, seal
from restate_recovery.errors import OperatorError
from restate_recovery.models import ApiModel, DoctorReadout
from restate_recovery.schemas import (
    CleanupStaleDeploymentsRequest,
    ForceRedeployRequest,
    RecoverStuckWorkflowRequest,
    RequestT,
    parse_request,
)

app = typer.Typer(
    name="restate-recovery",
    help="Operator runbooks that bring a Restate durable execution engine back to health.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print exactly the route's JSON body on stdout.")
]

EXIT_ROUTE_ERROR = 1


def _emit_json(body: Any) -> None:
    typer.echo(json.dumps(body, indent=2))


def fail(exc: OperatorError, *, as_json: bool) -> NoReturn:
    if as_json:
        _emit_json(exc.body())
    else:
        Console(stderr=True).print(f"[bold red]{exc.code}[/]: {exc.message}")
    raise typer.Exit(EXIT_ROUTE_ERROR)


def render_readout(readout: DoctorReadout, console: Console) -> None:
    table = Table(title="Restate doctor", show_lines=False)
    for column in ("component", "status", "latency ms", "detail"):
        table.add_column(column)
    colour = {"ok": "green", "degraded": "yellow", "unreachable": "red"}

    def status(value: str) -> str:
        return f"[{colour[value]}]{value}[/]"

    def latency(value: float | None) -> str:
        return "" if value is None else f"{value:g}"

    r = readout
    table.add_row("ingress", status(r.ingress.status), latency(r.ingress.latency_ms), "")
    table.add_row(
        "admin", status(r.admin.status), latency(r.admin.latency_ms), f"version {r.admin.version}"
    )
    table.add_row(
        "deployments",
        status(r.deployments.status),
        "",
        r.deployments.error or "\n".join(f"{d.id}  {d.service_url}" for d in r.deployments.items),
    )
    table.add_row(
        "services",
        status(r.services.status),
        "",
        r.services.error or ", ".join(f"{s.name} (rev {s.revision})" for s in r.services.items),
    )
    table.add_row(
        "invocations",
        status(r.invocations.status),
        "",
        r.invocations.error
        or ", ".join(f"{k}: {v}" for k, v in r.invocations.by_status.items())
        or "none",
    )
    console.print(table)
    if r.invocations.recent_failures:
        failures = Table(title="Recent failures (newest first)")
        for column in ("invocation", "service", "key", "status", "failed at"):
            failures.add_column(column, overflow="fold")
        failures.add_column("error", ratio=1)
        for f in r.invocations.recent_failures:
            failures.add_row(
                f.id,
                f.service_name or "",
                f.service_key or "",
                f.status,
                f.failed_at or "",
                f.error_message or "",
            )
        console.print(failures)


@app.command()
def doctor(json_output: JsonOption = False) -> None:
    """Read-only readout of ingress, admin API, deployments, services and invocations."""
    prefect_env.configure()
    from restate_recovery.runbooks import run_flow

    try:
        readout: DoctorReadout = asyncio.run(run_flow("doctor"))
    except OperatorError as exc:
        fail(exc, as_json=json_output)
    if json_output:
        _emit_json(readout.to_json())
    else:
        render_readout(readout, Console())


ReasonOption = Annotated[
    str | None, typer.Option("--reason", help="Why you run this (audit row and incident record).")
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Only plan: print what would be done, change nothing.")
]


def run_write(name: str, request: ApiModel, *, as_json: bool, **parameters: Any) -> None:
    """Run a write runbook's flow and print the route's body (or the error body)."""
    from restate_recovery.runbooks import run_flow

    try:
        body: dict[str, Any] = asyncio.run(run_flow(name, **parameters))
    except OperatorError as exc:
        fail(exc, as_json=as_json)
    if as_json:
        _emit_json(body)
        return
    console = Console()
    if body.get("dryRun"):
        console.print(f"[bold]{name}[/] dry run: nothing changed. Plan:")
        for step in body["plan"]:
            detail = f"  ({step['detail']})" if step.get("detail") else ""
            console.print(f"  - {step['action']} {step['target']}{detail}")
    else:
        console.print(f"[green]{name}[/]: " + json.dumps(body))


def _validated(model: type[RequestT], data: dict[str, Any], *, as_json: bool) -> RequestT:
    try:
        return parse_request(model, data)
    except OperatorError as exc:
        fail(exc, as_json=as_json)


@app.command("force-redeploy")
def force_redeploy(
    service_url: Annotated[str, typer.Option("--service-url", help="Live service URL.")],
    force: Annotated[bool, typer.Option("--force/--no-force", help="Forced registration.")] = True,
    dry_run: DryRunOption = False,
    reason: ReasonOption = None,
    json_output: JsonOption = False,
) -> None:
    """Register the live durable workflow service URL; prints the deployment id."""
    prefect_env.configure()
    request = _validated(
        ForceRedeployRequest, {"serviceUrl": service_url, "force": force}, as_json=json_output
    )
    stored_url, ref = seal(request.service_url)
    try:
        run_write(
            "force-redeploy",
            request,
            as_json=json_output,
            service_url=stored_url,
            force=request.force,
            dry_run=dry_run,
            credentials_ref=ref,
        )
    finally:
        forget(ref)


@app.command("cleanup-stale-deployments")
def cleanup_stale_deployments(
    service_url: Annotated[
        str, typer.Option("--service-url", help="Exact registered URL of the deployment to keep.")
    ],
    force_drain: Annotated[
        bool, typer.Option("--force-drain", help="Kill pinned work instead of waiting.")
    ] = False,
    dry_run: DryRunOption = False,
    reason: ReasonOption = None,
    json_output: JsonOption = False,
) -> None:
    """Keep the deployment matching --service-url exactly; drain and delete the others."""
    prefect_env.configure()
    request = _validated(
        CleanupStaleDeploymentsRequest,
        {"serviceUrl": service_url, "forceDrain": force_drain},
        as_json=json_output,
    )
    stored_url, ref = seal(request.service_url)
    try:
        run_write(
            "cleanup-stale-deployments",
            request,
            as_json=json_output,
            service_url=stored_url,
            force_drain=request.force_drain,
            dry_run=dry_run,
            credentials_ref=ref,
        )
    finally:
        forget(ref)


@app.command("recover-stuck-workflow")
def recover_stuck_workflow(
    service_name: Annotated[str, typer.Option("--service-name", help="Workflow service name.")],
    service_key: Annotated[str, typer.Option("--service-key", help="Workflow key.")],
    dry_run: DryRunOption = False,
    reason: ReasonOption = None,
    json_output: JsonOption = False,
) -> None:
    """Kill and purge a terminal-failed workflow key's runs and clear its state."""
    prefect_env.configure()
    request = _validated(
        RecoverStuckWorkflowRequest,
        {"serviceName": service_name, "serviceKey": service_key},
        as_json=json_output,
    )
    run_write(
        "recover-stuck-workflow",
        request,
        as_json=json_output,
        service_name=request.service_name,
        service_key=request.service_key,
        dry_run=dry_run,
    )


@app.command()
def demo() -> None:
    """The main job: local Restate + sample service, a failed workflow, doctor, recovery, doctor."""
    prefect_env.configure()
    from restate_recovery.demo.job import run_demo

    raise typer.Exit(run_demo(Console()))


if __name__ == "__main__":  # pragma: no cover
    app()
