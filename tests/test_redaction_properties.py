"""Property tests of credential redaction: no user information survives, everything else does."""

from __future__ import annotations

import json
import string
import sys
import threading
import warnings
from typing import Any
from urllib.parse import quote

import pytest
import websockets.asyncio.connection as ws_connection
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisDeprecationWarning
from prefect.utilities.math import clamped_poisson_interval

from restate_recovery.redaction import redact_arguments, redact_text, says_secret

pytestmark = pytest.mark.usefixtures("background_threads_own_random")


# userinfo may hold anything but "/", "?", "#" and spaces: unreserved, sub-delims, ":", "%XX",
# and even a raw "@" (clients split at the last "@" before the path).
USERINFO_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"
userinfo = st.text(USERINFO_CHARS, min_size=1, max_size=24).map(lambda s: "u" + s) | st.builds(
    lambda user, hexes: f"{user}:%{hexes}",
    st.text(string.ascii_letters, min_size=1, max_size=8),
    st.text("0123456789ABCDEF", min_size=2, max_size=2),
)
hosts = st.sampled_from(
    [
        "svc",
        "ddwf",
        "127.0.0.1",
        "[::1]",
        "[2001:db8::7]",
        "restate.internal.example",
        "xn--bcher-kva.ch",
    ]
)
ports = st.none() | st.integers(min_value=1, max_value=65535)
segments = st.text(string.ascii_letters + string.digits + "-._~@:%", max_size=12)
paths = st.lists(segments, max_size=4).map(lambda parts: "".join("/" + p for p in parts))
queries = st.none() | st.text(string.ascii_letters + string.digits + "=&@:/", max_size=16)
fragments = st.none() | st.text(string.ascii_letters + string.digits + "@:/", max_size=10)


@st.composite
def url_parts(draw: st.DrawFn) -> tuple[str, str, str]:
    """(scheme://, host[:port]path?query#fragment, userinfo)"""
    scheme = draw(st.sampled_from(["http", "https"]))
    host = draw(hosts)
    port = draw(ports)
    rest = host + (f":{port}" if port else "") + draw(paths)
    query, fragment = draw(queries), draw(fragments)
    rest += f"?{query}" if query is not None else ""
    rest += f"#{fragment}" if fragment is not None else ""
    return f"{scheme}://", rest, draw(userinfo)


@settings(max_examples=400, deadline=None)
@given(url_parts())
def test_user_information_is_replaced_and_the_rest_kept(parts: tuple[str, str, str]) -> None:
    scheme, rest, info = parts
    assert redact_text(f"{scheme}{info}@{rest}") == f"{scheme}REDACTED@{rest}"


@settings(max_examples=200, deadline=None)
@given(url_parts())
def test_urls_without_user_information_are_unchanged(parts: tuple[str, str, str]) -> None:
    scheme, rest, _ = parts
    assert redact_text(f"{scheme}{rest}") == f"{scheme}{rest}"


def nested(leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaf,
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(
                st.sampled_from(["a", "url", "items", "serviceUrl"]), children, max_size=3
            )
        ),
        max_leaves=12,
    )


@settings(max_examples=200, deadline=None)
@given(nested(url_parts().map(lambda p: f"see {p[0]}{p[2]}SECRETMARK@{p[1]} now") | st.integers()))
def test_nested_arguments_keep_no_user_information(value: Any) -> None:
    redacted = redact_arguments(value)
    assert "SECRETMARK" not in repr(redacted)
    assert repr(redacted).count("REDACTED@") == repr(value).count("SECRETMARK@")


@settings(max_examples=200, deadline=None)
@given(
    nested(st.text(string.ascii_letters + string.digits + " .,-_/@", max_size=20) | st.booleans())
)
def test_arguments_without_urls_or_secret_keys_survive_unchanged(value: Any) -> None:
    assert redact_arguments(value) == value


# Odd forms httpx (and so our admin client) accepts in the user information: spaces, non-ASCII,
# a raw "@", any case of scheme; and the forms a URL takes inside other text.
ODD_USERINFO_CHARS = USERINFO_CHARS + " \u00fc\u00e9\u4e2d\u0436"
MARK = "SECRETMARK"
odd_userinfo = st.builds(
    lambda a, b: f"{a}{MARK}{b}",
    st.text(ODD_USERINFO_CHARS, max_size=10),
    st.text(ODD_USERINFO_CHARS, max_size=10),
)
odd_schemes = st.sampled_from(["http", "https", "HTTP", "Https", "postgresql+psycopg", "redis"])
SECRET_PARAMS = [
    "token", "access_token", "password", "passwd", "pwd", "secret", "client_secret", "key",
    "api_key", "apikey", "X-Amz-Signature", "sig", "signature", "auth", "session", "jwt",
]  # fmt: skip
surroundings = st.sampled_from(
    ["{}", "see {} now", "({})", "<{}>", '"{}"', "'{}',", "url={} next", "[{}]", "error: {}."]
)


@settings(max_examples=400, deadline=None)
@given(odd_schemes, odd_userinfo, hosts, paths, surroundings)
def test_no_odd_user_information_survives_in_any_text(
    scheme: str, info: str, host: str, path: str, around: str
) -> None:
    text = around.format(f"{scheme}://{info}@{host}{path}")
    redacted = redact_text(text)
    assert MARK not in redacted
    assert f"{scheme}://REDACTED@{host}" in redacted


# What a query value may hold: anything but "&", "#", whitespace, quotes, "<" and ">" (so ";",
# "=", "?", "@", "%", non-ASCII too); the mark anywhere inside it.
QUERY_VALUE_CHARS = (
    string.ascii_letters + string.digits + "-._~%+/;:=,!$()*@?\\\u00fc\u00e9\u4e2d\u0436"
)
query_values = st.builds(
    lambda a, b: f"{a}{MARK}{b}",
    st.text(QUERY_VALUE_CHARS, max_size=12),
    st.text(QUERY_VALUE_CHARS, max_size=12),
)
SECRET_PARAM_FORMS = st.builds(
    lambda name, suffix: name + suffix,
    st.sampled_from(SECRET_PARAMS),
    st.sampled_from(["", "2", "[]", "[0]", "[token]", "%5B%5D"]),
)


@settings(max_examples=300, deadline=None)
@given(
    SECRET_PARAM_FORMS,
    st.sampled_from(["?", "&", "#", ";", "?a=1&", "#x&", "?a=1;", "?serviceKey=k1&"]),
    query_values,
    surroundings,
)
def test_secret_query_and_fragment_values_never_survive(
    name: str, separator: str, value: str, around: str
) -> None:
    url = f"https://svc.example/v1{separator}{name}={value}&page=2"
    redacted = redact_text(around.format(url))
    assert MARK not in redacted
    assert f"{name}=REDACTED" in redacted and "page=2" in redacted


@settings(max_examples=200, deadline=None)
@given(odd_userinfo.filter(lambda s: "%" not in s), hosts)
def test_a_credentialed_url_percent_encoded_inside_another_keeps_nothing(
    info: str, host: str
) -> None:
    inner = f"http://{info}@{host}/x"
    text = f"https://idp.example/login?next={quote(inner, safe='')}&a=1"
    assert quote(MARK) not in redact_text(text) and MARK not in redact_text(text)


SECRET_PAIR_NAMES = [
    "password", "token", "api_key", "client_secret", "Authorization", "db_password", "x-api-key",
    "token2", "password[0]", "auth[token]", "sessionToken", "key", "aws_session", "JSESSIONID",
    "PGPASSWORD", "X-Amz-Signature", "signingKey", "secret",
]  # fmt: skip
# An unquoted value runs to whitespace, a quote, "&", "<" or ">"; a quoted one holds anything.
UNQUOTED_CHARS = string.ascii_letters + string.digits + "+/=_-.;,:!?()%@~\\\u00fc\u4e2d"
any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


def quoted(style: str, value: str) -> str:
    """``value`` written as a quoted string of ``style``: escapes (and doubled quotes) inside."""
    if style == '"':
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if style == "'":
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "'" + value.replace("'", "''") + "'"  # SQL


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(SECRET_PAIR_NAMES),
    st.sampled_from(["=", ": ", " = ", '": "', " => ", ":="]),
    st.text(UNQUOTED_CHARS, max_size=12),
    st.text(UNQUOTED_CHARS, max_size=12),
)
def test_secret_pairs_in_free_text_lose_their_value(
    name: str, sep: str, before: str, after: str
) -> None:
    q = '"' if sep == '": "' else ""
    text = f"because {q}{name}{sep}{before}{MARK}{after}{q} was rotated"
    assert MARK not in redact_text(text)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(SECRET_PAIR_NAMES),
    st.sampled_from(["=", ": ", " = ", " => "]),
    st.sampled_from(['"', "'", "sql"]),
    any_text,
    any_text,
)
def test_quoted_secret_values_lose_everything_between_their_quotes(
    name: str, sep: str, style: str, before: str, after: str
) -> None:
    text = f"because {name}{sep}{quoted(style, before + MARK + after)} was rotated"
    redacted = redact_text(text)
    assert MARK not in redacted
    if style != "sql" or "\\" not in before + after:  # 'a\' reads as escaped: to the end
        assert redacted.endswith(" was rotated")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SECRET_PAIR_NAMES), any_text, any_text, st.integers(0, 2))
def test_secret_values_in_json_lose_everything_also_nested_in_a_string(
    name: str, before: str, after: str, depth: int
) -> None:
    body: Any = {"serviceName": "Identity", name: before + MARK + after, "serviceKey": "k1"}
    for _ in range(depth):  # JSON held in a string of JSON: {"body": "{\\"token\\": ...}"}
        body = {"body": json.dumps(body)}
    redacted = redact_text(json.dumps(body))
    assert MARK not in redacted
    assert "Identity" in redacted and "k1" in redacted


# Names that hold a secret word without saying secret, and prose around Bearer and Basic: kept.
NOT_SECRET_NAMES = [
    "tokenizer", "TokenExchangeWorkflow", "secretary", "authorName", "author", "passwordless",
    "password_hash_algo", "token_type", "serviceKey", "serviceName", "monkey", "keyboard",
    "signal", "object_key", "restate.service-key", "idempotency-key", "publicKey", "page",
]  # fmt: skip
WORDS = [
    "token", "tokens", "password", "secret", "key", "session", "auth", "rotated", "failed",
    "for", "workflows", "the", "was", "Identity", "deployment", "authentication", "retries",
]  # fmt: skip
PLAIN_VALUE_CHARS = string.ascii_letters + string.digits + "-_./"
plain_values = st.text(PLAIN_VALUE_CHARS, min_size=1, max_size=12)
not_secret_pairs = st.builds(
    lambda name, sep, value: f"{name}{sep}{value}",
    st.sampled_from(NOT_SECRET_NAMES),
    st.sampled_from(["=", ": ", " = ", " => "]),
    plain_values,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORDS + NOT_SECRET_NAMES) | not_secret_pairs, max_size=8))
def test_prose_with_names_that_say_no_secret_survives_unchanged(parts: list[str]) -> None:
    text = " ".join(parts)
    assert redact_text(text) == text


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["Bearer", "Basic", "bearer", "basic"]),
    st.lists(
        st.sampled_from([w for w in WORDS + NOT_SECRET_NAMES if w.isalpha()])
        | st.sampled_from(["token-based", "e.g.", "re-rotated", "Basic", "Bearer"]),
        max_size=4,
    ),
)
def test_bearer_and_basic_in_prose_keep_the_words_after_them(scheme: str, words: list[str]) -> None:
    """A word after them is kept unless shaped like a credential (a digit, or ``+/=._-`` in 8
    characters or more, and not lowercase words joined by ``-`` or ``.``)."""
    text = " ".join([scheme, *words]) + "."
    assert redact_text(text) == text


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(NOT_SECRET_NAMES), st.text(PLAIN_VALUE_CHARS + " ,;", max_size=12)
    ),
    st.sampled_from(["{}", "error: {} (retrying)", "'{}'"]),
)
def test_json_and_queries_of_names_that_say_no_secret_survive_unchanged(
    fields: dict[str, str], around: str
) -> None:
    body = around.format(json.dumps(fields))
    query = "https://svc.example/v1?" + "&".join(
        f"{k}={quote(v, safe='')}" for k, v in fields.items()
    )
    assert redact_text(body) == body
    assert redact_text(query) == query


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["", "db_", "x-", "client.", "aws_", "my", "X-Amz-", "user["]),
    st.sampled_from(["token", "password", "secret", "signature", "credential", "cookie"]),
    st.sampled_from(["", "2", "_1", "[]", "[0]", "s"]),
    st.sampled_from(["izer", "ary", "less", "Name", "Workflow", "_type", "_hash_algo", "Url"]),
)
def test_a_secret_word_says_secret_only_at_the_end_of_a_name(
    prefix: str, word: str, suffix: str, more: str
) -> None:
    name = prefix + word + ("]" if prefix.endswith("[") else "")
    assert says_secret(name + suffix)
    if not prefix.endswith("["):
        assert not says_secret(word + more) and not says_secret(prefix + word + more)


SAFE_NAMES = ["page", "limit", "q", "mode", "v", "filter", "region"]


@settings(max_examples=200, deadline=None)
@given(
    url_parts(),
    st.lists(
        st.tuples(st.sampled_from(SAFE_NAMES), st.text(string.ascii_letters, max_size=8)),
        max_size=3,
    ),
)
def test_urls_without_credentials_are_kept_to_the_letter(
    parts: tuple[str, str, str], params: list[tuple[str, str]]
) -> None:
    scheme, rest, _ = parts
    rest = rest.split("?")[0].split("#")[0] + ("?" + "&".join(f"{k}={v}" for k, v in params))
    assert redact_text(f"{scheme}{rest}") == f"{scheme}{rest}"


def test_background_threads_drawing_from_random_leave_hypothesis_alone() -> None:
    """The fixture's proof: a thread drawing as fast as it can through websockets' and Prefect's
    ``random`` (a ping, a retry jitter) while Hypothesis draws. Hypothesis reads any change to
    the global generator mid-draw as a strategy using ``random`` and warns (an error under this
    suite's ``filterwarnings``); with the fixture it sees none. Without it the warnings come on
    the first examples. (The fixture patches the modules loaded when the test starts.)"""
    stop = threading.Event()
    drawn_in_thread = 0

    def pinger() -> None:
        nonlocal drawn_in_thread
        while not stop.is_set():
            ws_connection.random.getrandbits(32)  # type: ignore[attr-defined]
            clamped_poisson_interval(1.0)
            drawn_in_thread += 1

    examples: list[int] = []

    @settings(max_examples=50, deadline=None, database=None)
    @given(st.lists(st.text(min_size=20), min_size=20))
    def draws(values: list[str]) -> None:
        examples.append(drawn_in_thread)

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over often, so the thread lands mid-draw
    thread = threading.Thread(target=pinger, daemon=True)
    thread.start()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            draws()
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(switch_interval)

    assert len(examples) == 50
    assert examples[-1] > examples[0]  # the thread did draw while Hypothesis drew
    assert [w.message for w in caught if issubclass(w.category, HypothesisDeprecationWarning)] == []
