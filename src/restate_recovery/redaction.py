"""What the audit table (and anything else we write) may keep of request arguments.

Every URL's user information becomes ``REDACTED`` (``restate_recovery.urls``), and the value of
any header-like secret (authorization, tokens, passwords, API keys, cookies) is replaced whole.
"""

from __future__ import annotations

import re
from typing import Any

from restate_recovery.urls import REDACTED, redact_url

SECRET_KEY = re.compile(
    r"(authorization|token|secret|password|passwd|api[-_]?key|cookie|credential)", re.IGNORECASE
)


def redact_arguments(value: Any) -> Any:
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
