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
from restate_recovery.errors import OperatorError
from restate_recovery.models import DoctorReadout

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


@app.command()
def demo() -> None:
    """The main job: a local Restate, the sample service, one failed workflow, then the doctor."""
    prefect_env.configure()
    from restate_recovery.demo.job import run_demo

    raise typer.Exit(run_demo(Console()))


if __name__ == "__main__":  # pragma: no cover
    app()
