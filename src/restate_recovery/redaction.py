"""What anything we write (the audit table, Prefect's database, artifacts, logs, answers) may keep.

``redact_text`` replaces, wherever it stands in a text (a URL, a reason, an error message,
Restate's own messages):

- the user information of every URL, in any form a client library accepts: ``http://user:secret@``
  with spaces, non-ASCII or a raw ``@`` inside, any scheme and case, and percent-encoded inside
  another URL, once or more and in any case (``http%3A%2F%2Fuser%3Apw%40host``,
  ``http%253a%252f%252fuser%253Apw%2540host``); scheme, host, port and path are kept;
- the value of every query, fragment or ``;`` parameter whose name says secret (below), also when
  percent-encoded inside another URL (``?next=https%3A%2F%2Fh%2F%3Ftoken%3Dabc``). The value runs
  to the next ``&``, ``#``, whitespace, quote, ``<`` or ``>``: a ``;`` inside it is part of it
  (``?token=abc;def``), while a ``;sig=`` after a non-secret parameter is a parameter of its own;
  a trailing ``.,;:!?)]}`` or backslash is given back (a sentence's end, a bracket, an escape),
  here and in unquoted values below. The value of a name that does not say secret is searched in
  turn (``?next=/login?token=abc``);
- the value of ``name=value``, ``name: value`` (and ``=>``, ``:=``) pairs whose name says secret:
  quoted (``"..."``, ``'...'``, with ``\\"``, ``\\'`` or doubled quotes inside, or ``\\"...\\"``
  in JSON held in a string; an unclosed quote runs to the end of the text) or not (to the next
  whitespace, quote, ``&``, ``<`` or ``>``; ``,`` and ``;`` inside are part of it, ``Cookie``
  values run to the end of the line); ``Authorization: Bearer x`` keeps its scheme word;
- ``Bearer`` or ``Basic`` (any case) standing alone, followed by something shaped like a
  credential: 8 characters or more holding a digit or one of ``+/=._-``, and not just lowercase
  words joined by ``-`` or ``.``. "Basic authentication failed", "Bearer tokens are rotated" and
  "Bearer token-based auth" are prose; "Bearer eyJhbGciOi.x.y", "Basic dXNlcjpwdw==" are not;
- API keys of this tool (``rrk_<hex id>_<secret>``) and of Prefect Cloud (``pnu_...``,
  ``pnb_...``), wherever they stand, even glued to other text (``my_rrk_...``, ``xrrk_...``):
  their shape alone is telling.

A name says secret when its last part is a secret word, after any trailing number (``token2``,
``password_1``) and in any of its ``[...]`` subscripts (``token[]``, ``auth[token]``,
``user[password]``, also ``%5B...%5D``-encoded):

- long words at the very end of the name, glued or not: ``token``, ``secret``, ``password``,
  ``passwd``, ``passphrase``, ``pwd``, ``credential``, ``signature``, ``cookie``, ``jwt``,
  ``authorization``, ``apikey``/``accesskey``/``privatekey``/``secretkey``/``signingkey``/
  ``masterkey``/``encryptionkey`` (with or without ``-``, ``_``, ``.``), ``sessionid``, ``sessid``,
  each also plural (``access_token``, ``db_password``, ``X-Amz-Signature``, ``sessionToken``,
  ``JSESSIONID``, ``tokens``);
- short words ``key``, ``sig``, ``auth``, ``session`` only as the whole name or its last part
  after ``_``, ``.``, ``-``, ``~`` or a camelCase boundary (``key``, ``api_key``, ``x-api-key``,
  ``signingKey``, ``proxyAuth``, ``aws_session``, ``userSession``); except the keys Restate names
  that are no secret: ``service``, ``object``, ``workflow``, ``idempotency``, ``state``,
  ``partition`` or ``public`` right before ``key`` (``serviceKey``, ``object_key``,
  ``restate.service-key``, ``idempotency-key``).

So the word must end the name: ``tokenizer``, ``TokenExchangeWorkflow``, ``secretary``,
``authorName``, ``author``, ``passwordless``, ``password_hash_algo``, ``token_type``, ``monkey``,
``keyboard``, ``signal``, ``serviceKey``, ``serviceName`` and their values are kept.

``redact`` does it for every string inside lists, tuples and dicts; ``redact_arguments`` also
replaces, whole, the value of any key that holds a long secret word anywhere (``SECRET_KEY``:
broader than the rule for names in text, since a field name is never prose). Over-redaction is
preferred to a leak: prose that happens to look like a credential loses that part.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

REDACTED = "REDACTED"

# A dict key holding one of these anywhere (redact_arguments): access_token, apiKey, passwordHash.
_KEY_WORDS = (
    "token|secret|password|passwd|passphrase|pwd|apikey|api[-_]?key|access[-_]?key|"
    "private[-_]?key|signature|credentials?|authorization|cookie|jwt"
)
SECRET_KEY = re.compile(rf"({_KEY_WORDS})", re.IGNORECASE)

# A name (or one of its [subscripts]) says secret when it ends with a long word, or its last part
# is a short one (see the module doc).
_LONG_WORD = re.compile(
    r"(?:token|secret|password|passwd|passphrase|pwd|credential|signature|cookie|jwt"
    r"|authorization|(?:api|access|private|secret|signing|master|encryption)[-_.]?key"
    r"|session[-_.]?id|sessid)s?$",
    re.IGNORECASE,
)
_SHORT_WORD = re.compile(
    r"(?:(?:^|[-_.~])(?i:key|sig|auth|session)"
    r"|(?<=[a-z0-9])(?:Key|KEY|Sig|SIG|Auth|AUTH|Session|SESSION))$"
)
# Restate's keys are no secrets: serviceKey, object_key, restate.service-key, idempotency-key
_NOT_A_SECRET_KEY = re.compile(
    r"(?:service|object|workflow|idempotency|state|partition|public)[-_.]?key$", re.IGNORECASE
)
_NUMBER = re.compile(r"[-_.]*\d*$")
_COOKIE = re.compile(r"cookies?$", re.IGNORECASE)


def says_secret(name: str) -> bool:
    """Whether a parameter or pair named ``name`` holds a credential (see the module doc)."""
    name = unquote(unquote(name))
    for part in re.split(r"[\[\]]+", name.strip("\\\"'")):
        part = _NUMBER.sub("", part)
        if not part or _NOT_A_SECRET_KEY.search(part):
            continue
        if _LONG_WORD.search(part) or _SHORT_WORD.search(part):
            return True
    return False


# A value given back what ends a sentence or a bracket around it ("(see ?token=abc)."), and a
# backslash (in "?token=ab\" it escapes the quote of the string the value stands in)
_TRAILING = r".,;:!?)\]}`\\"

# scheme://userinfo@ : the userinfo runs to the last "@" before the first "/", "?", "#", a line
# break or the next URL; it may hold spaces, non-ASCII and raw "@" (httpx accepts all of them).
_USERINFO = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>(?:(?!://)[^/?#\r\n])*@)"
)
# the same, but not past the end of a quoted string in JSON or a repr ("http://x", "token": ...):
# run first, so that a URL's userinfo never swallows the next field's name (whose value the
# pairs below then redact); a userinfo holding such a quote is left to _USERINFO after them.
_QUOTED_USERINFO = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)"
    r"(?P<userinfo>(?:(?!://|[\"']\s*[,:;}\])=])[^/?#\r\n])*@)"
)
# the same, percent-encoded inside another URL or a form value, once or more (%3A, %253A, ...):
# http%3A%2F%2Fuser%3Apw%40host, http%253A%252F%252Fuser%253Apw%2540host
_PCT = "%(?:25)*"
_ENCODED_END = rf"{_PCT}(?:2F|3F|23)"
_ENCODED_USERINFO = re.compile(
    rf"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*{_PCT}3A{_PCT}2F{_PCT}2F)"
    rf"(?P<userinfo>(?:(?!{_ENCODED_END})[^/?#&\s])*?)(?P<at>{_PCT}40)"
    rf"(?=(?:(?!{_PCT}40)[^/?#&\s])*(?:{_ENCODED_END}|[/?#&\s]|$))",
    re.IGNORECASE,
)
# ?token=..., &password=..., #access_token=..., ;sig=..., token[]=...
_QUERY_VALUE = rf"[^&#\s\"'<>]*[^&#\s\"'<>{_TRAILING}]"
_QUERY = re.compile(
    rf"[?&#;](?P<key>[\w.~%-]+(?:\[[^\[\]\s&#=\"'<>]*\])*)=(?P<value>{_QUERY_VALUE})"
)
# the same percent-encoded inside another URL: %3Ftoken%3Dabc%26x%3D1 (the value ends at %26, %23)
_ENCODED_GO_ON = rf"(?!{_PCT}(?:26|23))"
_ENCODED_QUERY = re.compile(
    rf"{_PCT}(?:3F|26|23|3B)(?P<key>(?:[\w.~-]|{_PCT}5[BD])+){_PCT}3D"
    rf"(?P<value>(?:{_ENCODED_GO_ON}[^&#\s\"'<>])*{_ENCODED_GO_ON}[^&#\s\"'<>{_TRAILING}])",
    re.IGNORECASE,
)
# password=hunter2, "token": "abc", api_key: abc, secret='x y', {\"token\": \"a\"}, 'pwd' => 'x'
_UNQUOTED = rf"[^\s\"'<>&]*[^\s\"'<>&{_TRAILING}]"
_PAIR = re.compile(
    r"(?<![\w.~%\[\]-])(?P<q>\\*[\"']|)(?P<key>[\w.-]+(?:\[[^\[\]\s&#=:\"'<>]*\])*)(?P=q)"
    r"\s*(?:=>|:=|[:=])\s*"
    r"(?P<value>\"(?:[^\"\\]|\\.|\"\")*(?:\"|\Z)"
    r"|'(?:[^'\\]|\\.|'')*(?:'|\Z)"
    r"|(?P<escaped>\\+[\"'])(?:(?!(?<!\\)(?P=escaped)).)*(?:(?<!\\)(?P=escaped)|\Z)"
    rf"|(?P<scheme>Bearer|Basic|Token|Digest)\s+{_UNQUOTED}"
    rf"|{_UNQUOTED})",
    re.IGNORECASE | re.DOTALL,
)
# Authorization schemes standing alone in text: "Bearer eyJ...", "Basic dXNlcjpwdw=="
_SCHEME_CREDENTIALS = re.compile(
    r"\b(?P<scheme>Bearer|Basic)\s+(?P<value>[A-Za-z0-9._~+/=-]*[A-Za-z0-9_~+/=-])",
    re.IGNORECASE,
)
_PROSE = re.compile(r"[a-z]+(?:[-.][a-z]+)*")
# API keys: this tool's (rrk_<id>_<secret>), Prefect Cloud's (pnu_/pnb_); no left boundary
_API_KEYS = re.compile(r"rrk_[0-9a-f]{8,}_[A-Za-z0-9_-]{16,}|pn[ub]_[A-Za-z0-9]{20,}")


def _redact_values(
    pattern: re.Pattern[str], text: str, replace: Callable[[re.Match[str]], tuple[str, int]]
) -> str:
    """Every ``value`` of ``pattern`` whose ``key`` says secret replaced by ``replace`` (which
    says where the value ends). The value of a name that does not say secret is searched in
    turn: ``?next=/login?token=abc``, ``?a=1;sig=x``, ``reason: password=x``."""
    out: list[str] = []
    written = start = 0
    while (match := pattern.search(text, start)) is not None:
        if not says_secret(match.group("key")):
            start = match.start("value")
            continue
        replacement, end = replace(match)
        out += [text[written : match.start("value")], replacement]
        written = start = end
    out.append(text[written:])
    return "".join(out)


def _whole(match: re.Match[str]) -> tuple[str, int]:
    return REDACTED, match.end()


def _pair(match: re.Match[str]) -> tuple[str, int]:
    value, end = match.group("value"), match.end()
    if match.group("scheme"):
        return match.group("scheme") + " " + REDACTED, end
    if match.group("escaped"):
        quote = match.group("escaped")
        return quote + REDACTED + (quote if value.endswith(quote) and len(value) > 1 else ""), end
    if value[:1] in "\"'":
        closed = len(value) > 1 and value.endswith(value[0])
        return value[0] + REDACTED + (value[0] if closed else ""), end
    if _COOKIE.search(match.group("key")):  # Cookie: a=1; sid=2 (to the end of the line)
        breaks = (match.string.find(c, end) for c in "\r\n")
        end = min((i for i in breaks if i >= 0), default=len(match.string))
    return REDACTED, end


def _scheme_credentials(match: re.Match[str]) -> str:
    value = match.group("value")
    if len(value) < 8 or not re.search(r"[0-9+/=._-]", value) or _PROSE.fullmatch(value):
        return match.group(0)  # prose: "Basic authentication", "Bearer token-based"
    return f"{match.group('scheme')} {REDACTED}"


def redact_text(text: str) -> str:
    """``text`` with every credential it holds replaced by ``REDACTED`` (see the module doc)."""
    text = _QUOTED_USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    text = _ENCODED_USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}{m.group('at')}", text)
    text = _redact_values(_ENCODED_QUERY, text, _whole)
    text = _redact_values(_QUERY, text, _whole)
    text = _redact_values(_PAIR, text, _pair)
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    text = _SCHEME_CREDENTIALS.sub(_scheme_credentials, text)
    return _API_KEYS.sub(REDACTED, text)


def shown_url(url: str) -> str:
    """A configured URL as it may be shown and stored: scheme, host, port and path; no user,
    password, query or fragment, and the rest redacted."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return redact_text(urlunsplit((parts.scheme, host, parts.path, "", "")).rstrip("/"))


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
