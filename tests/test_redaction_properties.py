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
