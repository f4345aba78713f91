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

Imports wait until a command needs them: the remote mode loads only click and the standard
library, so an operator's call starts fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from restate_recovery.cli.remote import Answer

EXIT_OK, EXIT_ROUTE_ERROR, EXIT_USAGE = 0, 1, 2

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print exactly the route's JSON body on stdout."
)
reason_option = click.option(
    "--reason", default=None, help="Why you run this (audit row and incident record)."
)
dry_run_option = click.option(
    "--dry-run", is_flag=True, help="Only plan: print what would be done, change nothing."
)


@click.group(
    name="restate-recovery",
    help="Operator runbooks that bring a Restate durable execution engine back to health.\n\n"
    "With DALP_API_URL and DALP_API_KEY set, the runbook commands are run by the operator API "
    "(remote mode); without DALP_API_URL they run in this process against RESTATE_ADMIN_URL "
    "(local break-glass mode).",
    context_settings={"help_option_names": ["-h", "--help"]},
)
def app() -> None:
    pass


def remote_mode() -> bool:
    return bool(os.environ.get("DALP_API_URL"))


def post(name: str, body: dict[str, Any], *, reason: str | None, dry_run: bool) -> Answer:
    """The route's answer from the operator API (remote mode)."""
    from restate_recovery.cli.remote import ConfigError, OperatorApiClient

    try:
        client = OperatorApiClient.from_environment()
    except ConfigError as exc:
        click.echo(f"restate-recovery: {exc}", err=True)
        raise SystemExit(EXIT_USAGE) from exc
    return client.post(name, body, reason=reason, dry_run=dry_run)


def show(answer: Answer, *, as_json: bool, render: Callable[[dict[str, Any]], None]) -> None:
    """Print the answer: its body (``--json``, or rendered), or its error body."""
    from restate_recovery.cli.output import emit_json, show_error

    if not answer.ok:
        show_error(answer.body, as_json=as_json)
    elif as_json:
        emit_json(answer.body)
    else:
        render(answer.body)


def finish(answer: Answer) -> None:
    if not answer.ok:
        raise SystemExit(EXIT_ROUTE_ERROR)


def show_readout(body: dict[str, Any]) -> None:
    from restate_recovery.cli.render import render_readout

    render_readout(body)


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

    def rendered(result: dict[str, Any]) -> None:
        from restate_recovery.cli.render import render_write

        render_write(name, result)

    show(answer, as_json=as_json, render=rendered)
    finish(answer)


@app.command()
@json_option
@reason_option
def doctor(as_json: bool, reason: str | None) -> None:
    """Read-only readout of ingress, admin API, deployments, services and invocations."""
    if remote_mode():
        answer = post("doctor", {}, reason=reason, dry_run=False)
        show(answer, as_json=as_json, render=show_readout)
        finish(answer)
        return
    import asyncio

    from restate_recovery.cli.local import answer_doctor
    from restate_recovery.runbooks import DOCTOR

    def shown(answer: Answer) -> None:  # printed as soon as the probes are done
        show(answer, as_json=as_json, render=show_readout)

    finish(asyncio.run(answer_doctor(DOCTOR, reason=reason, shown=shown)))


@app.command("force-redeploy")
@click.option("--service-url", required=True, help="Live service URL.")
@click.option("--force/--no-force", default=True, show_default=True, help="Forced registration.")
@dry_run_option
@reason_option
@json_option
def force_redeploy(
    service_url: str, force: bool, dry_run: bool, reason: str | None, as_json: bool
) -> None:
    """Register the live durable workflow service URL; prints the deployment id."""
    body = {"serviceUrl": service_url, "force": force}
    run_runbook("force-redeploy", body, reason=reason, dry_run=dry_run, as_json=as_json)


@app.command("cleanup-stale-deployments")
@click.option(
    "--service-url", required=True, help="Exact registered URL of the deployment to keep."
)
@click.option("--force-drain", is_flag=True, help="Kill pinned work instead of waiting.")
@dry_run_option
@reason_option
@json_option
def cleanup_stale_deployments(
    service_url: str, force_drain: bool, dry_run: bool, reason: str | None, as_json: bool
) -> None:
    """Keep the deployment matching --service-url exactly; drain and delete the others."""
    body = {"serviceUrl": service_url, "forceDrain": force_drain}
    run_runbook("cleanup-stale-deployments", body, reason=reason, dry_run=dry_run, as_json=as_json)


@app.command("recover-stuck-workflow")
@click.option("--service-name", required=True, help="Workflow service name.")
@click.option("--service-key", required=True, help="Workflow key.")
@dry_run_option
@reason_option
@json_option
def recover_stuck_workflow(
    service_name: str, service_key: str, dry_run: bool, reason: str | None, as_json: bool
) -> None:
    """Clear a terminal-failed workflow key's state and purge its run (it runs again blank)."""
    body = {"serviceName": service_name, "serviceKey": service_key}
    run_runbook("recover-stuck-workflow", body, reason=reason, dry_run=dry_run, as_json=as_json)


@app.command("resume-paused-invocations")
@click.option("--invocation-id", default=None, help="One invocation (inv_...).")
@click.option("--service-name", default=None, help="Every paused invocation of this service.")
@click.option("--service-key", default=None, help="Only this key of the service.")
@click.option(
    "--deployment",
    default="latest",
    show_default=True,
    help="latest, keep, or a deployment id (dp_...) that serves them.",
)
@click.option("--limit", type=int, default=100, show_default=True, help="At most this many.")
@dry_run_option
@reason_option
@json_option
def resume_paused_invocations(
    invocation_id: str | None,
    service_name: str | None,
    service_key: str | None,
    deployment: str,
    limit: int,
    dry_run: bool,
    reason: str | None,
    as_json: bool,
) -> None:
    """Resume paused invocations (one id, or a service's or key's) on a deployment."""
    body: dict[str, object] = {"deployment": deployment, "limit": limit}
    for name, value in (
        ("invocationId", invocation_id),
        ("serviceName", service_name),
        ("serviceKey", service_key),
    ):
        if value is not None:
            body[name] = value
    run_runbook("resume-paused-invocations", body, reason=reason, dry_run=dry_run, as_json=as_json)


@app.command("recover-stuck-workflows")
@click.option("--service-name", required=True, help="Workflow service name.")
@click.option("--error-contains", default=None, help="Only failures whose message holds this.")
@click.option("--failed-since", default=None, help="ISO 8601 time, e.g. 2026-12-01T10:00:00Z.")
@click.option("--failed-until", default=None, help="ISO 8601 time.")
@click.option("--limit", type=int, default=100, show_default=True, help="At most N keys.")
@click.option("--rate", type=float, default=20.0, show_default=True, help="Keys a second.")
@click.option("--concurrency", type=int, default=4, show_default=True, help="Keys at once.")
@dry_run_option
@reason_option
@json_option
def recover_stuck_workflows(
    service_name: str,
    error_contains: str | None,
    failed_since: str | None,
    failed_until: str | None,
    limit: int,
    rate: float,
    concurrency: int,
    dry_run: bool,
    reason: str | None,
    as_json: bool,
) -> None:
    """recover-stuck-workflow over many terminal-failed keys of one workflow service."""
    body: dict[str, Any] = {
        "serviceName": service_name,
        "limit": limit,
        "rate": rate,
        "concurrency": concurrency,
    }
    for name, value in (
        ("errorContains", error_contains),
        ("failedSince", failed_since),
        ("failedUntil", failed_until),
    ):
        if value is not None:
            body[name] = value
    run_runbook("recover-stuck-workflows", body, reason=reason, dry_run=dry_run, as_json=as_json)


@app.command("explain")
@click.option("--invocation-id", default=None, help="One invocation (inv_...).")
@click.option("--service-name", default=None, help="With --service-key: every invocation of it.")
@click.option("--service-key", default=None, help="The workflow key.")
@reason_option
@json_option
def explain(
    invocation_id: str | None,
    service_name: str | None,
    service_key: str | None,
    reason: str | None,
    as_json: bool,
) -> None:
    """Read-only: an invocation's (or a workflow key's) story, and the runbook that fits."""
    body = {
        name: value
        for name, value in (
            ("invocationId", invocation_id),
            ("serviceName", service_name),
            ("serviceKey", service_key),
        )
        if value is not None
    }
    if remote_mode():
        answer = post("explain", body, reason=reason, dry_run=False)
    else:
        from restate_recovery.cli.local import explain_here

        answer = explain_here(body, reason=reason)

    def rendered(result: dict[str, Any]) -> None:
        from restate_recovery.cli.render import render_explanation

        render_explanation(result)

    show(answer, as_json=as_json, render=rendered)
    finish(answer)


def main() -> None:
    from restate_recovery.cli import admin

    admin.register(app)
    try:
        app(standalone_mode=False)
    except click.exceptions.Exit as done:
        raise SystemExit(done.exit_code) from None
    except click.ClickException as usage:  # bad usage: click's own message, exit 2
        usage.show()
        raise SystemExit(EXIT_USAGE) from None
    except click.exceptions.Abort:
        raise SystemExit(130) from None
    except SystemExit:
        raise
    except Exception as exc:  # never a traceback: the error body, as a route would answer it
        from restate_recovery.cli.output import show_error
        from restate_recovery.errors import error_body

        as_json = "--json" in sys.argv
        show_error(error_body(exc), as_json=as_json)
        raise SystemExit(EXIT_ROUTE_ERROR) from None


if __name__ == "__main__":  # pragma: no cover
    main()
