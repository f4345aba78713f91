"""Property tests of credential redaction: no user information survives, everything else does."""

from __future__ import annotations

import random
import string
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from restate_recovery.redaction import redact_arguments
from restate_recovery.urls import redact_url

WEBSOCKETS_USING_RANDOM = (
    "websockets.asyncio.connection",
    "websockets.sync.connection",
    "websockets.legacy.protocol",
    "websockets.legacy.client",
    "websockets.client",
)


@pytest.fixture(autouse=True, scope="module")
def _websockets_draw_from_their_own_random() -> Iterator[None]:
    """Earlier tests in this process leave Prefect's events websocket open in a background
    thread; its keep-alive ping draws from the global ``random``. Landing during a Hypothesis
    draw, that reads as a strategy using ``random`` (a HypothesisDeprecationWarning, an error
    here). Those modules, where loaded, get a private generator while these properties run."""
    with pytest.MonkeyPatch.context() as patch:
        for name in WEBSOCKETS_USING_RANDOM:
            if name in sys.modules:
                patch.setattr(sys.modules[name], "random", random.Random())
        yield


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
    assert redact_url(f"{scheme}{info}@{rest}") == f"{scheme}REDACTED@{rest}"


@settings(max_examples=200, deadline=None)
@given(url_parts())
def test_urls_without_user_information_are_unchanged(parts: tuple[str, str, str]) -> None:
    scheme, rest, _ = parts
    assert redact_url(f"{scheme}{rest}") == f"{scheme}{rest}"


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
