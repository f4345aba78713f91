"""Keep credentials in service URLs out of everything Prefect stores.

Flow parameters are persisted in Prefect's database and shown in its UI, so a write runbook never
receives a credentialed URL as a parameter. The caller ``seal``s it: the flow gets the redacted
form (``http://REDACTED@host/...``) and an opaque reference into this process's memory, and
``unseal``s it right before calling Restate. A run in another process (a deployment run from the
UI) can use only the credentialed ``RESTATE_SERVICE_URL`` of its own environment, matched by its
redacted form.
"""

from __future__ import annotations

import secrets
import threading

from restate_recovery.errors import AdminUnreachableError
from restate_recovery.settings import get_settings
from restate_recovery.urls import REDACTED, redact_url

_vault: dict[str, str] = {}
_lock = threading.Lock()


def seal(url: str) -> tuple[str, str | None]:
    """(what may be stored, reference to the real URL or None when there was nothing to hide)."""
    redacted = redact_url(url)
    if redacted == url:
        return url, None
    ref = secrets.token_urlsafe(16)
    with _lock:
        _vault[ref] = url
    return redacted, ref


def unseal(url: str, ref: str | None) -> str:
    """The real URL for a (possibly redacted) parameter."""
    if f"{REDACTED}@" not in url:
        return url
    if ref is not None:
        with _lock:
            real = _vault.get(ref)
        if real is not None and redact_url(real) == url:
            return real
    configured = get_settings().restate_service_url
    if configured and redact_url(configured) == url:
        return configured
    raise AdminUnreachableError(
        f"The credentials of {url} are not available to this process: pass the URL to the CLI or "
        "API, or set RESTATE_SERVICE_URL with its credentials where the flow runs"
    )


def forget(ref: str | None) -> None:
    if ref is not None:
        with _lock:
            _vault.pop(ref, None)
