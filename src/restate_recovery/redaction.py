"""What anything we write (the audit table, Prefect's database, artifacts, logs, answers) may keep.

``redact_text`` replaces, wherever it stands in a text (a URL, a reason, an error message,
Restate's own messages):

- the user information of every URL, in any form a client library accepts: ``http://user:secret@``
  with spaces, non-ASCII or a raw ``@`` inside, any scheme and case, and percent-encoded inside
  another URL (``http%3A%2F%2Fuser%3Apw%40host``); scheme, host, port and path are kept;
- the value of every query or fragment parameter whose name says secret (``?token=``,
  ``&password=``, ``#access_token=``, ``key``, ``signature``, ``auth``, ...);
- ``name=value`` and ``name: value`` pairs, quoted or not, whose name says secret, and the
  credentials of ``Authorization``-style schemes (``Bearer ...``, ``Basic ...``);
- API keys of this tool (``rrk_...``) and of Prefect Cloud (``pnu_...``, ``pnb_...``).

``redact`` does it for every string inside lists, tuples and dicts; ``redact_arguments`` also
replaces, whole, the value of any secret-named key. Over-redaction is preferred to a leak: prose
that happens to look like a credential loses that part.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "REDACTED"

# A name that says secret, alone or inside a longer one (access_token, x-api-key, client_secret,
# db_password, aws_session_token, ...). Request fields and free-text pairs use these; "serviceKey"
# or "author" are not secrets.
_SECRET_WORDS = (
    "token|secret|password|passwd|passphrase|pwd|apikey|api[-_]?key|access[-_]?key|"
    "private[-_]?key|signature|credentials?|authorization|cookie|jwt"
)
SECRET_KEY = re.compile(rf"({_SECRET_WORDS})", re.IGNORECASE)
# Query parameters also take the short ones (?key=, &sig=, ?auth=, X-Amz-Signature, session=).
_QUERY_NAME = rf"[\w.~%-]*(?:{_SECRET_WORDS}|key|sig|auth|session)[\w.~%-]*"

# scheme://userinfo@ : the userinfo runs to the last "@" before the first "/", "?", "#", a line
# break or the next URL; it may hold spaces, non-ASCII and raw "@" (httpx accepts all of them).
_USERINFO = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>(?:(?!://)[^/?#\r\n])*@)"
)
# the same, percent-encoded inside another URL or a form value: http%3A%2F%2Fuser%3Apw%40host
_ENCODED_USERINFO = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*%3A%2F%2F)(?P<userinfo>(?:(?!%2F|%3F|%23)[^/?#&\s])*?%40)"
    r"(?=(?:(?!%40)[^/?#&\s])*(?:%2F|%3F|%23|[/?#&\s]|$))",
    re.IGNORECASE,
)
# ?token=..., &password=..., #access_token=..., ;sig=... (the value runs to the next separator)
_QUERY_SECRET = re.compile(
    rf"(?P<name>[?&#;]{_QUERY_NAME}=)(?P<value>[^&#;\s\"'<>]+)", re.IGNORECASE
)
# password=hunter2, "token": "abc", api_key: abc, secret='x y'
_PAIR_SECRET = re.compile(
    rf"(?P<name>[\"']?\b[\w.-]*(?:{_SECRET_WORDS})[\w.-]*[\"']?\s*[:=]\s*)"
    r"(?P<value>\"[^\"]*\"|'[^']*'|(?:Bearer|Basic|Token|Digest)\s+[^\s,;&\"']+|[^\s,;&\"'<>]+)",
    re.IGNORECASE,
)
# Authorization schemes standing alone in text: "Bearer eyJ...", "Basic dXNlcjpwdw=="
_SCHEME_CREDENTIALS = re.compile(r"\b(?P<scheme>Bearer|Basic)\s+(?P<value>[A-Za-z0-9._~+/=-]{8,})")
# API keys: this tool's (rrk_<id>_<secret>), Prefect Cloud's (pnu_/pnb_)
_API_KEYS = re.compile(r"\b(?:rrk_[0-9a-f]{8,}_[A-Za-z0-9_-]{16,}|pn[ub]_[A-Za-z0-9]{20,})")


def _pair(match: re.Match[str]) -> str:
    value = match.group("value")
    if value.startswith(("Bearer", "Basic", "Token", "Digest")):
        return match.group("name") + value.split()[0] + " " + REDACTED
    if value[:1] in "\"'":
        return match.group("name") + value[0] + REDACTED + value[0]
    return match.group("name") + REDACTED


def redact_text(text: str) -> str:
    """``text`` with every credential it holds replaced by ``REDACTED`` (see the module doc)."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    text = _ENCODED_USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}%40", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m.group('name')}{REDACTED}", text)
    text = _PAIR_SECRET.sub(_pair, text)
    text = _SCHEME_CREDENTIALS.sub(lambda m: f"{m.group('scheme')} {REDACTED}", text)
    return _API_KEYS.sub(REDACTED, text)


def redact(value: Any) -> Any:
    """``redact_text`` applied to every string inside lists, tuples and dicts."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def redact_arguments(value: Any) -> Any:
    """``redact``, and the value of every secret-named key replaced whole."""
    if isinstance(value, str):
        return redact_text(value)
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
