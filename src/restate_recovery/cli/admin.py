"""The CLI's administration commands, run where the audit database is (``RECOVERY_DATABASE_URL``):
API keys, the audit log, the automations, and serving the operator API."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from restate_recovery import prefect_env

JsonOption = Annotated[bool, typer.Option("--json", help="Print exactly the JSON body on stdout.")]

keys_app = typer.Typer(help="Operator API keys (stored hashed; a key is shown once).")
audit_app = typer.Typer(help="The operations audit log.")
automations_app = typer.Typer(help="Prefect automations that let alerts drive the runbooks.")


def _session() -> Any:
    from sqlmodel import Session

    from restate_recovery import store

    return Session(store.engine())


def _emit(body: Any) -> None:
    from restate_recovery.cli.render import emit_json

    emit_json(body)


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
        _emit(body)
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
        _emit(rows)
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
        _emit(rows)
        return
    for row in rows:
        error = f"  {row['error']['code']}" if row["error"] else ""
        typer.echo(
            f"{row['startedAt']}  {row['actorUserId']} ({row['roleAtTime']})  {row['route']}  "
            f"{row['outcome'] or 'running'}{error}  {json.dumps(row['arguments'])}"
        )


@automations_app.command("apply")
def automations_apply() -> None:
    """Create or replace the automations of deployments/automations.py (needs a Prefect server
    with the deployments of prefect.yaml or deployments/serve.py)."""
    if not prefect_env.configure(announce=False):
        typer.echo("automations apply needs PREFECT_API_URL (a running Prefect server)", err=True)
        raise typer.Exit(1)
    from deployments import automations

    for name in asyncio.run(automations.apply()):
        typer.echo(f"applied {name}")


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

    from restate_recovery.api.main import create_app

    uvicorn.run(create_app(), host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="api-keys")
    app.add_typer(audit_app, name="audit")
    app.add_typer(automations_app, name="automations")
    app.command()(api)
