"""What the CLI prints in any mode besides tables: ``--json`` bodies on stdout, error bodies on
stderr (code, message, request id, field errors). Click only: it is on every command's path."""

from __future__ import annotations

import json
import sys
from typing import Any

import click


def emit_json(body: Any) -> None:
    """The body as it is, and nothing else, on stdout."""
    sys.stdout.write(json.dumps(body, indent=2) + "\n")
    sys.stdout.flush()


def show_error(body: dict[str, Any], *, as_json: bool) -> None:
    """An error body: as it is on stdout with ``--json``, else one line per error on stderr."""
    if as_json:
        emit_json(body)
        return
    request = f" (request {body['requestId']})" if body.get("requestId") else ""
    code = click.style(str(body.get("code")), fg="red", bold=True)
    click.echo(f"{code}: {body.get('message')}{request}", err=True)
    for error in (body.get("data") or {}).get("errors", []):
        click.echo(f"  {error.get('field')}: {error.get('message')}", err=True)
