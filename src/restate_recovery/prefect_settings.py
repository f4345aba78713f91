"""Prefect's client settings, found where Prefect finds them, without importing Prefect.

Prefect 3.9 (``prefect.settings``) takes each setting from the first of these that has it: the
environment (names case-insensitive), a ``.env`` in the working directory, ``prefect.toml``,
``[tool.prefect]`` in ``pyproject.toml``, then the active profile (where ``prefect config set``
writes). Importing Prefect to ask costs about a second (docs/performance.md), so the doctor's
record reads the usual places itself: the environment, ``.env`` and the profile. It takes only
plain values; for anything else (a ``prefect.toml`` or ``[tool.prefect]``, a lower-case name, a
value Prefect would have to convert or refuse) ``read`` answers None and the caller asks Prefect.
``tests/test_run_record.py`` compares ``read`` with ``prefect.settings.Settings()``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Prefect reads no profile at all in its test mode (``prefect.settings.sources._is_test_mode``).
TEST_MODE = (
    "PREFECT_TEST_MODE",
    "PREFECT_UNIT_TEST_MODE",
    "PREFECT_TESTING_UNIT_TEST_MODE",
    "PREFECT_TESTING_TEST_MODE",
)
URL = "PREFECT_API_URL"
AUTH_STRING = "PREFECT_API_AUTH_STRING"
KEY = "PREFECT_API_KEY"
SKIP_VERIFY = "PREFECT_API_TLS_INSECURE_SKIP_VERIFY"
CERT_FILE = "PREFECT_API_SSL_CERT_FILE"
HEADERS = "PREFECT_CLIENT_CUSTOM_HEADERS"
MAX_RETRIES = "PREFECT_CLIENT_MAX_RETRIES"
RETRY_EXTRA_CODES = "PREFECT_CLIENT_RETRY_EXTRA_CODES"
CLIENT_SETTINGS = (
    URL,
    AUTH_STRING,
    KEY,
    SKIP_VERIFY,
    CERT_FILE,
    HEADERS,
    MAX_RETRIES,
    RETRY_EXTRA_CODES,
)
# The strings pydantic reads as booleans.
TRUE = {"1", "on", "t", "true", "y", "yes"}
FALSE = {"0", "off", "f", "false", "n", "no"}
DIGITS = re.compile(r"[0-9]+")
DEFAULT_MAX_RETRIES = 5
# Whole sections as JSON (PREFECT_API='{"url": ...}') win over the flat names: Prefect's call.
SECTIONS = {"PREFECT_API", "PREFECT_CLIENT"}


@dataclass(frozen=True)
class ConnectionSettings:
    """What a Prefect client connects with (``prefect.client.orchestration.PrefectClient``)."""

    api_url: str | None
    auth_string: str | None = None
    api_key: str | None = None
    tls_insecure_skip_verify: bool = False
    ssl_cert_file: str | None = None
    custom_headers: Mapping[str, str] = field(default_factory=dict)
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_extra_codes: frozenset[int] = frozenset()

    @classmethod
    def of(cls, settings: Any) -> ConnectionSettings:
        """From Prefect's own ``prefect.settings.Settings``."""
        auth, key, codes = (
            settings.api.auth_string,
            settings.api.key,
            settings.client.retry_extra_codes,
        )
        return cls(
            api_url=settings.api.url or None,
            auth_string=auth.get_secret_value() if auth else None,
            api_key=key.get_secret_value() if key else None,
            tls_insecure_skip_verify=settings.api.tls_insecure_skip_verify,
            ssl_cert_file=settings.api.ssl_cert_file or None,
            custom_headers=dict(settings.client.custom_headers or {}),
            max_retries=settings.client.max_retries,
            retry_extra_codes=frozenset({codes} if isinstance(codes, int) else codes or ()),
        )


def read_toml(path: Path, *, strict: bool = False) -> dict[str, Any]:
    """A TOML file: nothing when it is missing, or broken unless ``strict`` (Prefect ignores a
    broken profiles file but refuses a broken ``pyproject.toml``)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        if strict:
            raise ValueError(f"{path}: {exc}") from exc
        return {}


def table(data: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    """``data[k1][k2]...``, or nothing where a level is missing or not a table."""
    found: Any = data
    for key in keys:
        found = found.get(key) if isinstance(found, dict) else None
    return found if isinstance(found, dict) else {}


def read_dotenv(path: Path) -> dict[str, str]:
    """A ``.env`` file read by python-dotenv, as Prefect's settings read it (comments, quotes,
    escapes, ``${VAR}`` from the environment); a name without ``=`` is not set."""
    if not path.exists() or path.is_dir():
        return {}
    from dotenv import dotenv_values  # pydantic-settings' own dependency: no Prefect import

    return {k: v for k, v in dotenv_values(path, encoding="utf-8").items() if v is not None}


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
        or table(read_toml(cwd / "pyproject.toml"), "tool", "prefect").get("profiles_path")
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
    """The settings of Prefect's active profile: ``PREFECT_PROFILE`` or the file's ``active``,
    else Prefect's default profile (which sets no server); nothing in Prefect's test mode."""
    if any(environ.get(name) for name in TEST_MODE):
        return {}
    path = profiles_path(environ, Path.cwd() if cwd is None else cwd)
    bundled = _bundled_profiles()
    default = read_toml(bundled) if bundled else {}
    default_profile = table(default, "profiles", str(default.get("active", "ephemeral")))
    if path is None or not path.exists():
        return default_profile
    profiles = read_toml(path)
    active = environ.get("PREFECT_PROFILE") or profiles.get("active")
    if not isinstance(active, str) or not active or active not in table(profiles, "profiles"):
        return default_profile
    return table(profiles, "profiles", active)


def _raw(environ: Mapping[str, str], cwd: Path) -> dict[str, object] | None:
    """Each client setting from the first place Prefect would take it from (a name set to an
    empty value counts, as for Prefect); None where only Prefect can say."""
    if any(key.upper().startswith("PREFECT_") and key != key.upper() for key in environ):
        return None  # Prefect's environment names are case-insensitive: let it decide
    pyproject = read_toml(cwd / "pyproject.toml", strict=True)
    tool = pyproject.get("tool", {})
    if (cwd / "prefect.toml").exists() or not isinstance(tool, dict) or "prefect" in tool:
        return None  # nested, typed settings: only Prefect reads them right (or refuses them)
    dotenv = {key.upper(): value for key, value in read_dotenv(cwd / ".env").items()}
    profile = active_profile(environ, cwd)
    if any(SECTIONS & set(source) for source in (environ, dotenv, profile)):
        return None
    found: dict[str, object] = {}
    for name in CLIENT_SETTINGS:
        for source in (environ, dotenv, profile):
            if name in source:
                found[name] = source[name]
                break
    return found


def _text(value: object) -> str | None:
    if not isinstance(value, str):
        raise ValueError(value)
    return value or None


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE | FALSE:
        return value.lower() in TRUE
    raise ValueError(value)


def _count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and DIGITS.fullmatch(value):
        return int(value)
    raise ValueError(value)


def _codes(value: object) -> frozenset[int]:
    if value == "":
        return frozenset()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        items = [items]
    codes = frozenset(_count(item.strip() if isinstance(item, str) else item) for item in items)
    if not all(100 <= code <= 599 for code in codes):
        raise ValueError(value)
    return codes


def _headers(value: object) -> dict[str, str]:
    headers = json.loads(_text(value) or "")
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ValueError(value)
    return headers


def read(
    environ: Mapping[str, str] = os.environ, cwd: Path | None = None
) -> ConnectionSettings | None:
    """The client settings Prefect would use, or None where only Prefect can say."""
    try:
        raw = _raw(environ, Path.cwd() if cwd is None else cwd)
        if raw is None:
            return None

        def pick(name: str, parse: Callable[[object], Any], default: Any = None) -> Any:
            return parse(raw[name]) if name in raw else default

        return ConnectionSettings(
            api_url=pick(URL, _text),
            auth_string=pick(AUTH_STRING, _text),
            api_key=pick(KEY, _text),
            tls_insecure_skip_verify=pick(SKIP_VERIFY, _flag, False),
            # Prefect's default is SSL_CERT_FILE, as read when it is imported
            ssl_cert_file=pick(CERT_FILE, _text, environ.get("SSL_CERT_FILE") or None),
            custom_headers=pick(HEADERS, _headers, {}),
            max_retries=pick(MAX_RETRIES, _count, DEFAULT_MAX_RETRIES),
            retry_extra_codes=pick(RETRY_EXTRA_CODES, _codes, frozenset()),
        )
    except (OSError, ValueError):  # unreadable, or not a plain value (json's errors too)
        return None  # Prefect's call: it reads it, or says why it can't


def server_configured(environ: Mapping[str, str] = os.environ, cwd: Path | None = None) -> bool:
    """Whether Prefect would find a server URL: ``read``'s answer, or where it can't tell, the
    first URL setting found in Prefect's order (an empty one counts: it means none)."""
    cwd = Path.cwd() if cwd is None else cwd
    settings = read(environ, cwd)
    if settings is not None:
        return settings.api_url is not None
    try:
        flat = [dict(environ), read_dotenv(cwd / ".env")]
        nested = [
            read_toml(cwd / "prefect.toml"),
            table(read_toml(cwd / "pyproject.toml"), "tool", "prefect"),
        ]
        profile = active_profile(environ, cwd)
    except (OSError, ValueError):
        return False
    for source in flat:
        for key, value in source.items():
            if key.upper() == URL:
                return bool(value)
    for source in nested:
        if "url" in table(source, "api"):
            return bool(table(source, "api")["url"])
    return bool(profile.get(URL))
