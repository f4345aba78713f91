"""The CLI's administration commands, run where the audit database is (``RECOVERY_DATABASE_URL``):
API keys, the audit log, the automations, and serving the operator API. Their imports wait until
they run: the runbook commands' remote mode must start fast."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print the JSON on stdout.")


def _session() -> Any:
    from sqlmodel import Session

    from restate_recovery import store

    return Session(store.engine())


def _emit(body: Any) -> None:
    from restate_recovery.cli.output import emit_json

    emit_json(body)


@click.group("api-keys", help="Operator API keys (stored hashed; a key is shown once).")
def keys_app() -> None:
    pass


@keys_app.command("create")
@click.option("--actor", required=True, help="Actor user id the key acts as.")
@click.option("--role", required=True, help="Role recorded in audit rows.")
@click.option(
    "--permission", "permissions", multiple=True, help="Permission (repeatable): system:operate."
)
@json_option
def api_keys_create(actor: str, role: str, permissions: tuple[str, ...], as_json: bool) -> None:
    """Create an API key and print it once."""
    from restate_recovery import store

    for value, option in [(actor, "--actor"), (role, "--role")]:
        try:
            store.check_label(value, option)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=option) from exc
    with _session() as session:
        try:
            key, plaintext = store.create_api_key(
                session=session, actor=actor, role=role, permissions=list(permissions)
            )
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--permission") from exc
    body = {
        "id": key.id,
        "key": plaintext,
        "actor": key.actor_user_id,
        "role": key.role,
        "permissions": key.permissions,
    }
    if as_json:
        _emit(body)
    else:
        click.echo(f"key {key.id} for {actor} ({role}; {', '.join(key.permissions) or 'none'})")
        click.echo(f"X-Api-Key: {plaintext}")
        click.echo("It is shown only now: store it in your secret manager.")


@keys_app.command("list")
@json_option
def api_keys_list(as_json: bool) -> None:
    """List API keys (never the keys themselves)."""
    from restate_recovery import store

    with _session() as session:
        rows = [store.api_key_public(k) for k in store.list_api_keys(session=session)]
    if as_json:
        _emit(rows)
        return
    for row in rows:
        state = f"revoked {row['revokedAt']}" if row["revokedAt"] else "active"
        click.echo(
            f"{row['id']}  {row['actor']}  {row['role']}  {','.join(row['permissions'])}  {state}"
        )


@keys_app.command("revoke")
@click.argument("key_id")
def api_keys_revoke(key_id: str) -> None:
    """Revoke an API key (it answers 401 from then on)."""
    from restate_recovery import store

    with _session() as session:
        if not store.revoke_api_key(session=session, key_id=key_id):
            click.echo(f"no API key {key_id}", err=True)
            raise SystemExit(1)
    click.echo(f"revoked {key_id}")


@click.group("audit", help="The operations audit log.")
def audit_app() -> None:
    pass


@audit_app.command("list")
@json_option
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
def audit_list(as_json: bool, limit: int) -> None:
    """The newest audit rows first."""
    from restate_recovery import store

    with _session() as session:
        rows = [store.audit_public(r) for r in store.list_attempts(session=session, limit=limit)]
    if as_json:
        _emit(rows)
        return
    for row in rows:
        error = f"  {row['error']['code']}" if row["error"] else ""
        reason = f"  reason: {shown(row['reason'])}" if row["reason"] else ""
        click.echo(
            f"{row['startedAt']}  {shown(row['actorUserId'])} ({shown(row['roleAtTime'])})  "
            f"{row['route']}  {row['outcome'] or 'running'}{error}  "
            f"{json.dumps(row['arguments'], ensure_ascii=False)}{reason}"
        )


def shown(text: str | None) -> str:
    """Text as stored, with control characters and line breaks escaped: one row, one line."""
    if text is None:
        return ""
    return "".join(
        ch
        if unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp")
        else ch.encode("unicode_escape").decode()
        for ch in text
    )


@click.group("automations", help="Prefect automations that let alerts drive the runbooks.")
def automations_app() -> None:
    pass


@automations_app.command("apply")
def automations_apply() -> None:
    """Create or replace the automations (deployments/automations.py); needs a Prefect server
    with the runbook deployments (prefect.yaml or deployments/serve.py)."""
    import asyncio

    from restate_recovery import prefect_env

    if not prefect_env.configure(announce=False):
        click.echo("automations apply needs PREFECT_API_URL (a running Prefect server)", err=True)
        raise SystemExit(1)
    from deployments import automations

    for name in asyncio.run(automations.apply()):
        click.echo(f"applied {name}")


@click.command("api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
def api(host: str, port: int) -> None:
    """Serve the operator HTTP API (FastAPI + uvicorn). Without a Prefect server named
    (PREFECT_API_URL or Prefect's profile) it runs beside the embedded Prefect server of ``up``
    (started if it is not running, stopped after)."""
    from restate_recovery import prefect_env

    if not prefect_env.configure(announce=False):
        # Not Prefect's temporary server: a long-lived API running flows against it
        # concurrently had doctor records hang for good (seen in CI). The API then runs as a
        # process of its own, told the embedded server's URL before Prefect reads its settings.
        from restate_recovery import up

        raise SystemExit(up.run_api(up.home(), host=host, port=port))
    from restate_recovery.api.main import create_app
    from restate_recovery.api.server import serve

    serve(create_app(), host=host, port=port)


@click.command("up")
@click.option(
    "--prefect-port",
    type=int,
    default=None,
    help="[default: 4200, or RECOVERY_EMBEDDED_PREFECT_PORT]",
)
@click.option("--api-port", type=int, default=8000, show_default=True)
@click.option("--no-ui", is_flag=True, help="Serve Prefect without its UI.")
def up_command(prefect_port: int | None, api_port: int, no_ui: bool) -> None:
    """Start the whole control plane on embedded defaults: a Prefect server (its home in the
    data directory), the runbook deployments, the automations and the operator API; Ctrl-C
    stops it all."""
    from restate_recovery import up

    port = prefect_port or up.PREFECT_PORT
    raise SystemExit(up.run(up.home(), prefect_port=port, api_port=api_port, ui=not no_ui))


def register(app: click.Group) -> None:
    for command in (keys_app, audit_app, automations_app, api, up_command):
        app.add_command(command)
