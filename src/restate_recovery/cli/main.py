"""The operator CLI: ``restate-recovery``.

Two modes, chosen by the environment:

- **remote** (``DALP_API_URL`` and ``DALP_API_KEY`` set): every runbook command, and the doctor,
  posts the route's body to the operator API with the key. The API runs the runbook and signs
  the audit row with the key's actor. This is how operators work.
- **local** (no ``DALP_API_URL``): the runbook's flow runs in this process against
  ``RESTATE_ADMIN_URL``, audited as the OS user with the role ``local-break-glass``. For
  break-glass (the API is down) and development.

Both print the same: a table, or with ``--json`` exactly the route's body (or the error body) on
stdout. Exit codes: 0 success (a doctor readout is a success, whatever it reads), 1 the route (or
the API) answered an error, 2 bad usage or configuration.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from restate_recovery.cli.remote import Answer

EXIT_OK, EXIT_ROUTE_ERROR, EXIT_USAGE = 0, 1, 2

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
ReasonOption = Annotated[
    str | None,
    typer.Option("--reason", help="Why you run this (audit row and incident record)."),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Only plan: print what would be done, change nothing.")
]


def remote_mode() -> bool:
    return bool(os.environ.get("DALP_API_URL"))


def post(name: str, body: dict[str, Any], *, reason: str | None, dry_run: bool) -> Answer:
    """The route's answer from the operator API (remote mode)."""
    from restate_recovery.cli.remote import ConfigError, OperatorApiClient

    try:
        client = OperatorApiClient.from_environment()
    except ConfigError as exc:
        typer.echo(f"restate-recovery: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from exc
    return client.post(name, body, reason=reason, dry_run=dry_run)


def show(answer: Answer, *, as_json: bool, render: Callable[[dict[str, Any]], None]) -> None:
    """Print the answer: its body (``--json``, or rendered), or its error body."""
    from restate_recovery.cli.render import emit_json, show_error

    if not answer.ok:
        show_error(answer.body, as_json=as_json)
    elif as_json:
        emit_json(answer.body)
    else:
        render(answer.body)


def finish(answer: Answer, *, as_json: bool, render: Callable[[dict[str, Any]], None]) -> None:
    """Print the answer and exit with its code."""
    show(answer, as_json=as_json, render=render)
    if not answer.ok:
        raise typer.Exit(EXIT_ROUTE_ERROR)


def show_readout(body: dict[str, Any]) -> None:
    from rich.console import Console

    from restate_recovery.cli.render import render_readout

    render_readout(body, Console())


def run_runbook(
    name: str, body: dict[str, Any], *, reason: str | None, dry_run: bool, as_json: bool
) -> None:
    """A write runbook, in either mode."""
    if remote_mode():
        answer = post(name, body, reason=reason, dry_run=dry_run)
    else:
        from restate_recovery.cli.local import run_write
        from restate_recovery.runbooks import runbook

        answer = run_write(runbook(name), body, reason=reason, dry_run=dry_run)

    def show(result: dict[str, Any]) -> None:
        from rich.console import Console

        from restate_recovery.cli.render import render_write

        render_write(name, result, Console())

    finish(answer, as_json=as_json, render=show)


@app.command()
def doctor(json_output: JsonOption = False, reason: ReasonOption = None) -> None:
    """Read-only readout of ingress, admin API, deployments, services and invocations."""
    if remote_mode():
        answer = post("doctor", {}, reason=reason, dry_run=False)
        finish(answer, as_json=json_output, render=show_readout)
        return
    import asyncio

    from restate_recovery.cli.local import answer_doctor
    from restate_recovery.runbooks import DOCTOR

    def shown(answer: Answer) -> None:  # printed as soon as the probes are done
        show(answer, as_json=json_output, render=show_readout)

    answer = asyncio.run(answer_doctor(DOCTOR, reason=reason, shown=shown))
    if not answer.ok:
        raise typer.Exit(EXIT_ROUTE_ERROR)


@app.command("force-redeploy")
def force_redeploy(
    service_url: Annotated[str, typer.Option("--service-url", help="Live service URL.")],
    force: Annotated[bool, typer.Option("--force/--no-force", help="Forced registration.")] = True,
    dry_run: DryRunOption = False,
    reason: ReasonOption = None,
    json_output: JsonOption = False,
) -> None:
    """Register the live durable workflow service URL; prints the deployment id."""
    body = {"serviceUrl": service_url, "force": force}
    run_runbook("force-redeploy", body, reason=reason, dry_run=dry_run, as_json=json_output)


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
    body = {"serviceUrl": service_url, "forceDrain": force_drain}
    run_runbook(
        "cleanup-stale-deployments", body, reason=reason, dry_run=dry_run, as_json=json_output
    )


@app.command("recover-stuck-workflow")
def recover_stuck_workflow(
    service_name: Annotated[str, typer.Option("--service-name", help="Workflow service name.")],
    service_key: Annotated[str, typer.Option("--service-key", help="Workflow key.")],
    dry_run: DryRunOption = False,
    reason: ReasonOption = None,
    json_output: JsonOption = False,
) -> None:
    """Kill and purge a terminal-failed workflow key's runs and clear its state."""
    body = {"serviceName": service_name, "serviceKey": service_key}
    run_runbook("recover-stuck-workflow", body, reason=reason, dry_run=dry_run, as_json=json_output)


def _register_admin_commands() -> None:
    from restate_recovery.cli import admin

    admin.register(app)


_register_admin_commands()


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
