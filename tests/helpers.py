"""Small real-network helpers for fault tests: a closed port and a port that never answers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from restate_recovery.demo.local_stack import free_port


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


@contextmanager
def black_hole_url() -> Iterator[str]:
    """A loopback URL whose listener completes TCP handshakes but never reads or answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
