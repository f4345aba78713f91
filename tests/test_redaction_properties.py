"""Property tests of credential redaction: no user information survives, everything else does."""

from __future__ import annotations

import string
import sys
import threading
import warnings
from typing import Any

import pytest
import websockets.asyncio.connection as ws_connection
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisDeprecationWarning
from prefect.utilities.math import clamped_poisson_interval

from restate_recovery.redaction import redact_arguments, redact_text

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


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(SECRET_PARAMS),
    st.sampled_from(["?", "&", "#", "?a=1&", "#x&"]),
    st.text(string.ascii_letters + string.digits + "-._~%+/", min_size=1, max_size=20),
    surroundings,
)
def test_secret_query_and_fragment_values_never_survive(
    name: str, separator: str, value: str, around: str
) -> None:
    url = f"https://svc.example/v1{separator}{name}={MARK}{value}&page=2"
    redacted = redact_text(around.format(url))
    assert MARK not in redacted
    assert f"{name}=REDACTED" in redacted and "page=2" in redacted


@settings(max_examples=200, deadline=None)
@given(odd_userinfo.filter(lambda s: "%" not in s), hosts)
def test_a_credentialed_url_percent_encoded_inside_another_keeps_nothing(
    info: str, host: str
) -> None:
    from urllib.parse import quote

    inner = f"http://{info}@{host}/x"
    text = f"https://idp.example/login?next={quote(inner, safe='')}&a=1"
    assert quote(MARK) not in redact_text(text) and MARK not in redact_text(text)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["password", "token", "api_key", "client_secret", "Authorization"]),
    st.sampled_from(["=", ": ", " = ", '": "']),
    st.text(string.ascii_letters + string.digits + "+/=_-.", min_size=1, max_size=24),
)
def test_secret_pairs_in_free_text_lose_their_value(name: str, sep: str, value: str) -> None:
    quote = '"' if sep == '": "' else ""
    text = f"because {quote}{name}{sep}{MARK}{value}{quote} was rotated"
    assert MARK not in redact_text(text)


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
