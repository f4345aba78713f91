"""Prefect environment defaults, applied before ``prefect`` is first imported.

With ``PREFECT_API_URL`` set (in the environment, or anywhere else Prefect reads it: a ``.env``,
``prefect.toml``, ``[tool.prefect]`` or its active profile), runs are recorded in that server.
Without it Prefect starts a temporary server in the process (13-15 s on these machines, and its
first database migration on a new ``PREFECT_HOME`` takes about 17 s, past Prefect's own 20 s
start-up default). For that embedded default we start the home's database from a pre-migrated
copy made by ``scripts/bootstrap`` (no migration), raise the start-up timeout for the case where
there is no copy, and say what it costs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tomllib
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

from restate_recovery.settings import DATA_DIR

EMBEDDED_STARTUP_TIMEOUT_SECONDS = "180"
STARTUP_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
TEMPLATE_DIR = DATA_DIR / "prefect-template"


def template_database() -> Path:
    """Where the migrated, empty Prefect database for the installed Prefect version is kept."""
    return TEMPLATE_DIR / f"prefect-{version('prefect')}.db"


def seed_embedded_database() -> bool:
    """Give a new ``PREFECT_HOME`` a copy of the pre-migrated database (only when it has none
    and no other database is configured). Returns True when it did."""
    if os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL") or os.environ.get(
        "PREFECT_API_DATABASE_CONNECTION_URL"
    ):
        return False
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    target, template = home / "prefect.db", template_database()
    if target.exists() or not template.exists():
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


# Prefect reads no profile at all in its test mode (``prefect.settings.sources._is_test_mode``).
TEST_MODE = (
    "PREFECT_TEST_MODE",
    "PREFECT_UNIT_TEST_MODE",
    "PREFECT_TESTING_UNIT_TEST_MODE",
    "PREFECT_TESTING_TEST_MODE",
)


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as Prefect reads it: nothing when it is missing or broken."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a ``.env`` file (``export``, comments and quotes as dotenv has them)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return {}
    found = {}
    for line in text.splitlines():
        line = line.strip().removeprefix("export ").lstrip()
        if "=" in line and not line.startswith("#"):
            key, value = (part.strip() for part in line.split("=", 1))
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            found[key] = value
    return found


def _bundled_profiles() -> Path | None:
    """Prefect's own profiles.toml, found without importing Prefect."""
    spec = importlib.util.find_spec("prefect")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "settings" / "profiles.toml"


def profiles_path(environ: Mapping[str, str], cwd: Path) -> Path | None:
    """Where Prefect reads its profiles (``prefect.settings.sources._get_profiles_path``)."""
    if any(environ.get(name) for name in TEST_MODE):
        return _bundled_profiles()
    configured = (
        environ.get("PREFECT_PROFILES_PATH")
        or read_dotenv(cwd / ".env").get("PREFECT_PROFILES_PATH")
        or read_toml(cwd / "prefect.toml").get("profiles_path")
        or read_toml(cwd / "pyproject.toml").get("tool", {}).get("prefect", {}).get("profiles_path")
    )
    if configured:
        return cwd / str(configured)  # relative to the working directory, as for Prefect
    if environ.get("PREFECT_HOME"):
        return Path(environ["PREFECT_HOME"]) / "profiles.toml"
    default = Path.home() / ".prefect" / "profiles.toml"
    return default if default.exists() else _bundled_profiles()


def active_profile(
    environ: Mapping[str, str] = os.environ, cwd: Path | None = None
) -> Mapping[str, Any]:
    """The settings of Prefect's active profile, found as Prefect finds them, without importing
    Prefect: ``PREFECT_PROFILE`` or the file's ``active``, else Prefect's default profile (which
    sets no server); nothing in Prefect's test mode."""
    if any(environ.get(name) for name in TEST_MODE):
        return {}
    path = profiles_path(environ, Path.cwd() if cwd is None else cwd)
    default = read_toml(_bundled_profiles() or Path())
    default_profile: dict[str, Any] = default.get("profiles", {}).get(
        default.get("active", "ephemeral"), {}
    )
    if path is None or not path.exists():
        return default_profile
    profiles = read_toml(path)
    active = environ.get("PREFECT_PROFILE") or profiles.get("active")
    found = profiles.get("profiles", {}).get(active) if isinstance(active, str) else None
    return found if isinstance(found, dict) else default_profile


def server_configured(environ: Mapping[str, str] = os.environ, cwd: Path | None = None) -> bool:
    """Whether Prefect would find a ``PREFECT_API_URL``: the environment, the working directory's
    ``.env``, ``prefect.toml`` or ``[tool.prefect]``, or the active profile."""
    cwd = Path.cwd() if cwd is None else cwd
    if any(key.upper() == "PREFECT_API_URL" and value for key, value in environ.items()):
        return True
    if any(k.upper() == "PREFECT_API_URL" and v for k, v in read_dotenv(cwd / ".env").items()):
        return True
    pyproject = read_toml(cwd / "pyproject.toml").get("tool", {}).get("prefect", {})
    for table in (read_toml(cwd / "prefect.toml"), pyproject):
        api = table.get("api", {})
        if isinstance(api, dict) and api.get("url"):
            return True
    return bool(active_profile(environ, cwd).get("PREFECT_API_URL"))


def configure(*, announce: bool = True) -> bool:
    """Set safe defaults (never overriding the caller's). Returns True when a server is configured."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_CLI_PROMPT", "false")
    if server_configured():
        return True
    os.environ.setdefault(STARTUP_TIMEOUT, EMBEDDED_STARTUP_TIMEOUT_SECONDS)
    seeded = seed_embedded_database()
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
