"""What anything we write (the audit table, Prefect's database, artifacts, logs, answers) may keep.

``redact_url``: every URL's user information becomes ``REDACTED``
(``http://user:secret@host:9080/v1`` -> ``http://REDACTED@host:9080/v1``); scheme, host, port,
path, query and fragment are kept. ``redact``: the same for every string inside lists, tuples and
dicts. ``redact_arguments``: also replaces, whole, the value of any header-like secret
(authorization, tokens, passwords, API keys, cookies).
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "REDACTED"

# scheme://userinfo@host: the userinfo runs to the last "@" before the first "/", "?" or "#".
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/?#\s]*@)")

SECRET_KEY = re.compile(
    r"(authorization|token|secret|password|passwd|api[-_]?key|cookie|credential)", re.IGNORECASE
)


def redact_url(text: str) -> str:
    """Replace the user information of every URL in ``text`` with ``REDACTED``."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)


def redact(value: Any) -> Any:
    """``redact_url`` applied to every string inside lists, tuples and dicts."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def redact_arguments(value: Any) -> Any:
    """``redact``, and the value of every secret-named key replaced whole."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, dict):
        return {
            str(k): (
                REDACTED if SECRET_KEY.search(str(k)) and v is not None else redact_arguments(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_arguments(v) for v in value]
    return value
