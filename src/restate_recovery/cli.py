"""The operator CLI: ``restate-recovery``.

Every command runs the same Prefect flow as the API and the deployments. ``--json`` prints exactly
the route's response body on stdout (or the error body ``{"code", "message"}`` with a non-zero
exit); Prefect's own logs go to stderr.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from restate_recovery import prefect_env
from restate_recovery.credentials import forget, seal
from restate_recovery.errors import InvalidRequestError, OperatorError
from restate_recovery.models import ApiModel, DoctorReadout
from restate_recovery.operations import Actor, DoctorRecorder, audit_refusal, run_audited
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


def show_error(exc: OperatorError, *, as_json: bool) -> None:
    if as_json:
        _emit_json(exc.body())
    else:
        Console(stderr=True).print(f"[bold red]{exc.code}[/]: {exc.message}")


def fail(exc: OperatorError, *, as_json: bool) -> NoReturn:
    show_error(exc, as_json=as_json)
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


ActorOption = Annotated[
    str | None,
    typer.Option("--actor", help="Who runs this, for the audit row (default: the OS user)."),
]
ReasonOption = Annotated[
    str | None, typer.Option("--reason", help="Why you run this (audit row and incident record).")
]


def cli_actor(actor: str | None) -> Actor:
    return Actor(user_id=actor or getpass.getuser(), role="cli")


def run_cli_flow(
    route: str,
    *,
    actor: str | None,
    reason: str | None,
    arguments: dict[str, Any],
    parameters: dict[str, Any],
) -> Any:
    """Run a runbook flow with its audit row (role ``cli``)."""
    return asyncio.run(
        run_audited(
            actor=cli_actor(actor),
            route=route,
            arguments=arguments,
            reason=reason,
            request_id=None,
            flow_name=route,
            parameters=parameters,
        )
    )


@app.command()
def doctor(
    json_output: JsonOption = False, actor: ActorOption = None, reason: ReasonOption = None
) -> None:
    """Read-only readout of ingress, admin API, deployments, services and invocations."""
    prefect_env.configure()
    outcome = asyncio.run(answer_then_record(cli_actor(actor), reason, json_output))
    if isinstance(outcome, OperatorError):
        raise typer.Exit(EXIT_ROUTE_ERROR)


async def answer_then_record(
    actor: Actor, reason: str | None, as_json: bool
) -> DoctorReadout | OperatorError:
    """Print the readout the moment the probes are done, then record it as a ``restate-doctor``
    flow run (the way the operator API does, ``run_record``). The audit row is written before
    anything is printed and finished once the run is recorded."""
    recorder = DoctorRecorder(source="CLI", max_pending=1)
    try:
        try:
            outcome: DoctorReadout | OperatorError = await recorder.answer(
                actor=actor, reason=reason, request_id=None
            )
        except OperatorError as exc:
            outcome = exc
        if isinstance(outcome, OperatorError):
            show_error(outcome, as_json=as_json)
        elif as_json:
            _emit_json(outcome.to_json())
        else:
            render_readout(outcome, Console())
        sys.stdout.flush()
        await recorder.drain(timeout=RECORD_TIMEOUT_SECONDS)
    finally:
        await recorder.aclose()
    return outcome


# How long the CLI waits for its doctor run to be recorded (a temporary Prefect server included).
RECORD_TIMEOUT_SECONDS = 600.0


DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Only plan: print what would be done, change nothing.")
]


def run_write(
    name: str,
    request: ApiModel,
    *,
    as_json: bool,
    actor: str | None,
    reason: str | None,
    **parameters: Any,
) -> None:
    """Run a write runbook's flow (audited) and print the route's body (or the error body)."""
    arguments = {**request.to_json(), "dryRun": parameters.get("dry_run", False)}
    try:
        body: dict[str, Any] = run_cli_flow(
            name, actor=actor, reason=reason, arguments=arguments, parameters=parameters
        )
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


def run_sealed_write(
    name: str,
    request: ForceRedeployRequest | CleanupStaleDeploymentsRequest,
    as_json: bool,
    actor: str | None,
    reason: str | None,
    parameters: dict[str, Any],
) -> None:
    """A write that takes a service URL: the flow gets the redacted URL and a reference."""
    stored_url, ref = seal(request.service_url)
    try:
        run_write(
            name,
            request,
            as_json=as_json,
            actor=actor,
            reason=reason,
            service_url=stored_url,
            credentials_ref=ref,
            **parameters,
        )
    finally:
        forget(ref)


def _validated(
    route: str,
    model: type[RequestT],
    data: dict[str, Any],
    *,
    as_json: bool,
    actor: str | None,
    reason: str | None,
) -> RequestT:
    """The request model, or (audited) INVALID_REQUEST before anything runs."""
    try:
        return parse_request(model, data)
    except InvalidRequestError as exc:
        asyncio.run(
            audit_refusal(
                actor=cli_actor(actor),
                route=route,
                arguments=data,
                reason=reason,
                request_id=None,
                error=exc,
            )
        )
        fail(exc, as_json=as_json)


@app.command("force-redeploy")
def force_redeploy(
    service_url: Annotated[str, typer.Option("--service-url", help="Live service URL.")],
    force: Annotated[bool, typer.Option("--force/--no-force", help="Forced registration.")] = True,
    dry_run: DryRunOption = False,
    reason: ReasonOption = None,
    actor: ActorOption = None,
    json_output: JsonOption = False,
) -> None:
    """Register the live durable workflow service URL; prints the deployment id."""
    prefect_env.configure()
    request = _validated(
        "force-redeploy",
        ForceRedeployRequest,
        {"serviceUrl": service_url, "force": force},
        as_json=json_output,
        actor=actor,
        reason=reason,
    )
    parameters = {"force": request.force, "dry_run": dry_run}
    run_sealed_write("force-redeploy", request, json_output, actor, reason, parameters)


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
    actor: ActorOption = None,
    json_output: JsonOption = False,
) -> None:
    """Keep the deployment matching --service-url exactly; drain and delete the others."""
    prefect_env.configure()
    request = _validated(
        "cleanup-stale-deployments",
        CleanupStaleDeploymentsRequest,
        {"serviceUrl": service_url, "forceDrain": force_drain},
        as_json=json_output,
        actor=actor,
        reason=reason,
    )
    parameters = {"force_drain": request.force_drain, "dry_run": dry_run}
    run_sealed_write("cleanup-stale-deployments", request, json_output, actor, reason, parameters)


@app.command("recover-stuck-workflow")
def recover_stuck_workflow(
    service_name: Annotated[str, typer.Option("--service-name", help="Workflow service name.")],
    service_key: Annotated[str, typer.Option("--service-key", help="Workflow key.")],
    dry_run: DryRunOption = False,
    reason: ReasonOption = None,
    actor: ActorOption = None,
    json_output: JsonOption = False,
) -> None:
    """Kill and purge a terminal-failed workflow key's runs and clear its state."""
    prefect_env.configure()
    request = _validated(
        "recover-stuck-workflow",
        RecoverStuckWorkflowRequest,
        {"serviceName": service_name, "serviceKey": service_key},
        as_json=json_output,
        actor=actor,
        reason=reason,
    )
    run_write(
        "recover-stuck-workflow",
        request,
        as_json=json_output,
        actor=actor,
        reason=reason,
        service_name=request.service_name,
        service_key=request.service_key,
        dry_run=dry_run,
    )


keys_app = typer.Typer(help="Operator API keys (stored hashed; a key is shown once).")
audit_app = typer.Typer(help="The operations audit log.")
app.add_typer(keys_app, name="api-keys")
app.add_typer(audit_app, name="audit")


def _session() -> Any:
    from sqlmodel import Session

    from restate_recovery import store
    from restate_recovery.operations import database_url

    return Session(store.engine_for(database_url()))


@keys_app.command("create")
def api_keys_create(
    actor: Annotated[str, typer.Option("--actor", help="Actor user id the key acts as.")],
    role: Annotated[str, typer.Option("--role", help="Role recorded in audit rows.")],
    permission: Annotated[
        list[str] | None,
        typer.Option("--permission", help="Permission (repeatable), e.g. system:operate."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Create an API key and print it once."""
    from restate_recovery import store

    with _session() as session:
        key, plaintext = store.create_api_key(
            session=session, actor=actor, role=role, permissions=list(permission or [])
        )
    body = {
        "id": key.id,
        "key": plaintext,
        "actor": key.actor_user_id,
        "role": key.role,
        "permissions": key.permissions,
    }
    if json_output:
        _emit_json(body)
    else:
        typer.echo(f"key {key.id} for {actor} ({role}; {', '.join(key.permissions) or 'none'})")
        typer.echo(f"X-Api-Key: {plaintext}")
        typer.echo("It is shown only now: store it in your secret manager.")


@keys_app.command("list")
def api_keys_list(json_output: JsonOption = False) -> None:
    """List API keys (never the keys themselves)."""
    from restate_recovery import store

    with _session() as session:
        rows = [store.api_key_public(k) for k in store.list_api_keys(session=session)]
    if json_output:
        _emit_json(rows)
        return
    for row in rows:
        state = f"revoked {row['revokedAt']}" if row["revokedAt"] else "active"
        typer.echo(
            f"{row['id']}  {row['actor']}  {row['role']}  {','.join(row['permissions'])}  {state}"
        )


@keys_app.command("revoke")
def api_keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id.")]) -> None:
    """Revoke an API key (it answers 401 from then on)."""
    from restate_recovery import store

    with _session() as session:
        if not store.revoke_api_key(session=session, key_id=key_id):
            typer.echo(f"no API key {key_id}", err=True)
            raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


@audit_app.command("list")
def audit_list(
    json_output: JsonOption = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000)] = 50,
) -> None:
    """The newest audit rows first."""
    from restate_recovery import store

    with _session() as session:
        rows = [store.audit_public(r) for r in store.list_attempts(session=session, limit=limit)]
    if json_output:
        _emit_json(rows)
        return
    for row in rows:
        error = f"  {row['error']['code']}" if row["error"] else ""
        typer.echo(
            f"{row['startedAt']}  {row['actorUserId']} ({row['roleAtTime']})  {row['route']}  "
            f"{row['outcome'] or 'running'}{error}  {json.dumps(row['arguments'])}"
        )


automations_app = typer.Typer(help="Prefect automations that let alerts drive the runbooks.")
app.add_typer(automations_app, name="automations")


@automations_app.command("apply")
def automations_apply() -> None:
    """Create or replace the automations in deployments/automations.py (needs PREFECT_API_URL
    and the deployments of prefect.yaml)."""
    if not prefect_env.configure(announce=False):
        typer.echo("automations apply needs PREFECT_API_URL (a running Prefect server)", err=True)
        raise typer.Exit(1)
    from prefect.utilities.importtools import load_script_as_module

    from restate_recovery.settings import PROJECT_DIR

    module = load_script_as_module(str(PROJECT_DIR / "deployments" / "automations.py"))
    for name in asyncio.run(module.apply()):
        typer.echo(f"applied {name}")


@app.command()
def api(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
) -> None:
    """Serve the operator HTTP API (FastAPI + uvicorn); needs PREFECT_API_URL."""
    if not prefect_env.configure(announce=False):
        # Prefect's temporary server is for one-shot commands: a long-lived API running flows
        # against it concurrently had doctor records hang for good (seen in CI).
        typer.echo("the operator API needs PREFECT_API_URL (a running Prefect server)", err=True)
        raise typer.Exit(2)
    import uvicorn

    from restate_recovery.api import create_app

    uvicorn.run(create_app(), host=host, port=port, log_level="info")


@app.command()
def demo() -> None:
    """The main job: local Restate + sample service, a failed workflow, doctor, recovery, doctor."""
    prefect_env.configure()
    from restate_recovery.demo.job import run_demo

    raise typer.Exit(run_demo(Console()))


if __name__ == "__main__":  # pragma: no cover
    app()
