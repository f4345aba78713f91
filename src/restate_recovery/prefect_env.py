"""Prefect environment defaults, applied before ``prefect`` is first imported.

With ``PREFECT_API_URL`` set, runs are recorded in that server. Without it Prefect starts a
temporary server in the process (13-15 s on these machines, and its first database migration on
a new ``PREFECT_HOME`` takes about 17 s, past Prefect's own 20 s start-up default): we raise that
start-up timeout so the embedded default works on a fresh machine, and say what it costs.
"""

from __future__ import annotations

import os
import sys

EMBEDDED_STARTUP_TIMEOUT_SECONDS = "180"


def configure(*, announce: bool = True) -> bool:
    """Set safe defaults (never overriding the caller's). Returns True when a server is configured."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_CLI_PROMPT", "false")
    if os.environ.get("PREFECT_API_URL"):
        return True
    os.environ.setdefault(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EMBEDDED_STARTUP_TIMEOUT_SECONDS
    )
    if announce:
        sys.stderr.write(
            "note: PREFECT_API_URL is not set, so this run starts Prefect's temporary server "
            "(about 15 s; the first run on a new PREFECT_HOME also migrates its database, about "
            "20 s more). Point PREFECT_API_URL at a running Prefect server to record the run "
            "there in about 1 s.\n"
        )
    return False
