"""Credential redaction for URLs (and anything that contains them).

``http://user:secret@host:9080/v1`` becomes ``http://REDACTED@host:9080/v1``: scheme, host, port,
path, query and fragment are kept; only the user information goes.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "REDACTED"

# scheme://userinfo@host: the userinfo runs to the last "@" before the first "/", "?" or "#".
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/?#\s]*@)")


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
