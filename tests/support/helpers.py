"""Small real-network helpers: a closed port, a port that never answers, a run's artifacts, and
reads of Restate's admin /query (a run's sleep, its completion)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import httpx

from tests.support.local_stack import free_port


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


def artifacts_of(prefect_api_url: str, flow_run_id: str) -> list[dict[str, Any]]:
    """The artifacts a Prefect flow run left, from Prefect's API."""
    response = httpx.post(
        f"{prefect_api_url}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}},
        timeout=10,
    )
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()
    return result


class Receiver:
    """A local HTTP endpoint that keeps every JSON body posted to it (a webhook's receiver)."""

    def __init__(self) -> None:
        import http.server
        import json
        import threading

        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                try:
                    received.append(json.loads(body or b"{}"))
                except ValueError:
                    received.append({"raw": body.decode(errors="replace")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/approvals"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def query(admin_url: str, sql: str) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{admin_url}/query",
        json={"query": sql},
        headers={"accept": "application/json"},
        timeout=10.0,
    )
    response.raise_for_status()
    rows: list[dict[str, Any]] = response.json()["rows"]
    return rows


def sleep_of(admin_url: str, invocation_id: str) -> float:
    """When the run's sleep was due (Restate's own record, epoch seconds)."""
    (row,) = query(
        admin_url,
        f"SELECT entry_json FROM sys_journal WHERE id = '{invocation_id}' "
        "AND entry_type = 'Command: Sleep'",
    )
    return float(json.loads(row["entry_json"])["Command"]["Sleep"]["wake_up_time"]) / 1000


def completed_at(admin_url: str, invocation_id: str) -> float:
    (row,) = query(
        admin_url, f"SELECT completed_at FROM sys_invocation WHERE id = '{invocation_id}'"
    )
    return datetime.fromisoformat(row["completed_at"].replace("Z", "+00:00")).timestamp()
