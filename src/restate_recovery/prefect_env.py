"""Prefect environment defaults, applied before Prefect first reads its settings.

With ``PREFECT_API_URL`` set (in the environment, or anywhere else Prefect reads it: a ``.env``,
``prefect.toml``, ``[tool.prefect]`` or its active profile), runs are recorded in that server.
Without it Prefect starts a temporary server in the process (13-15 s on these machines, and its
first database migration on a new ``PREFECT_HOME`` takes about 17 s, past Prefect's own 20 s
start-up default). For that embedded default we start the home's database from a pre-migrated
copy made by ``scripts/bootstrap`` (no migration), raise the start-up timeout for the case where
there is no copy, and say what it costs.
"""

from __future__ import annotations

import os
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

from restate_recovery.settings import DATA_DIR

EMBEDDED_STARTUP_TIMEOUT_SECONDS = "180"
STARTUP_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
TEMPLATE_DIR = DATA_DIR / "prefect-template"


def template_database() -> Path:
    """Where the migrated, empty Prefect database for the installed Prefect version is kept."""
    return TEMPLATE_DIR / f"prefect-{version('prefect')}.db"


def seed_embedded_database(home: Path, database_url: str) -> bool:
    """Give a new Prefect home a copy of the pre-migrated database (only when it has none and
    its database is the default one there). Returns True when it did."""
    target, template = home / "prefect.db", template_database()
    if database_url != f"sqlite+aiosqlite:///{target}" or target.exists() or not template.exists():
        return False
    home.mkdir(parents=True, exist_ok=True)
    partial = home / f"prefect.db.{os.getpid()}.partial"
    shutil.copyfile(template, partial)
    try:  # never over a database another process has just seeded and opened
        os.link(partial, target)
    except FileExistsError:
        return False
    finally:
        partial.unlink()
    return True


_configured: list[bool] = []  # the answer of the first call: Prefect reads its settings once


def configure(*, announce: bool = True) -> bool:
    """Set safe defaults before Prefect first reads its settings (never overriding the caller's),
    then read them the way Prefect does. Returns True when they name a server. Only the first
    call in a process does this (and says what the temporary server costs); later calls return
    its answer."""
    if _configured:
        return _configured[0]
    _configured.append(_configure(announce=announce))
    return _configured[0]


def _configure(*, announce: bool) -> bool:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_CLI_PROMPT", "false")
    os.environ.setdefault(STARTUP_TIMEOUT, EMBEDDED_STARTUP_TIMEOUT_SECONDS)  # embedded only
    # PREFECT_CLIENT_MAX_RETRIES stays Prefect's own (5, about a minute of backoff): a busy
    # Prefect answers 503 for seconds at a time (its SQLite locked under load), and a write
    # runbook waits that out. A Prefect that is not there at all is known at once (its client
    # does not retry a refused first connection).
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        return True
    database = settings.server.database.connection_url
    seeded = seed_embedded_database(
        Path(settings.home).expanduser(), database.get_secret_value() if database else ""
    )
    if announce:
        sys.stderr.write(
            "note: PREFECT_API_URL is not set (nor in Prefect's profile), so this run "
            "starts Prefect's temporary server "
            "(6-20 s by machine, 15-20 s on this project's"
            + ("; this PREFECT_HOME starts from the pre-migrated database" if seeded else "")
            + "; a new PREFECT_HOME with no pre-migrated copy also migrates, about 20 s more). "
            "Point PREFECT_API_URL at a running Prefect server to record the run there "
            "instead.\n"
        )
    return False
