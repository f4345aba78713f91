"""A bounded load run against the operator API on loopback: N concurrent doctor calls for a
fixed time, plus a mix of refused writes. Prints what came back; changes nothing in Restate.

    .venv/bin/python -m tools.load [--concurrency 50] [--seconds 30]
        starts its own restate-server, sample service, Prefect server and operator API on free
        loopback ports, runs the load, and checks one audit row per attempt;
    .venv/bin/python -m tools.load --api URL --key KEY ...   uses a running API.

Each of the N clients keeps one connection and sends its next call as soon as the last is
answered. By default they speak HTTP/1.1 themselves (``LeanClient``: a request is one write, an
answer is read by its Content-Length): 50 httpx clients in this one process cost about 1.5 ms of
CPU a call, ten times the lean client, on the same two cores as the API, and each answer waited
behind the tool's handling of the others. ``--client httpx`` measures with httpx instead. The
idle figure is measured with the same client as the load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

PREFIX = "/api/v2/admin/operator/restate"
REFUSED_WRITES: list[tuple[str, Any]] = [
    ("recover-stuck-workflow", {"serviceName": "Bad Name", "serviceKey": "k"}),  # 400
    ("cleanup-stale-deployments", {"serviceUrl": "http://127.0.0.1:1/none/"}),  # 404
    ("recover-stuck-workflow", {"serviceName": "NoSuchWorkflow", "serviceKey": "k"}),  # 409
]


class LeanClient:
    """One kept HTTP/1.1 connection to the API: POST a JSON body, read the answer by its
    ``Content-Length`` (the API sends one on every answer; a missing one is an error)."""

    def __init__(self, api_url: str, key: str) -> None:
        parts = urlsplit(api_url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise SystemExit(f"the lean client needs http://host:port, got {api_url}")
        self.host, self.port, self.netloc, self.key = parts.hostname, parts.port, parts.netloc, key
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: Any) -> tuple[int, dict[str, str], bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        payload = json.dumps(body).encode()
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.netloc}\r\nX-Api-Key: {self.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.aclose()  # the server closed it: the next call opens a new one
            raise
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if "content-length" not in headers:
            raise RuntimeError(f"an answer without Content-Length: {status_line}")
        return (
            int(status_line.split()[1]),
            headers,
            await reader.readexactly(int(headers["content-length"])),
        )

    async def aclose(self) -> None:
        if self._streams is not None:
            _, writer = self._streams
            self._streams = None
            writer.close()


Post = Callable[[str, Any], Awaitable[tuple[int, dict[str, str], bytes]]]


async def posters(
    stack: contextlib.AsyncExitStack, api_url: str, key: str, n: int, client: str
) -> list[Post]:
    """``n`` independent clients (one connection each), as ``post(path, body)``."""
    if client == "lean":
        lean = [LeanClient(api_url, key) for _ in range(n)]
        for one in lean:
            stack.push_async_callback(one.aclose)
        return [one.post for one in lean]
    # One client (one kept connection) per worker: a shared pool of 50 costs httpcore more CPU
    # per request than the API's own answer (it scans every connection on each request).
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    result: list[Post] = []
    for _ in range(n):
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=api_url, timeout=120, limits=limits)
        )
        result.append(_httpx_post(http, key))
    return result


def _httpx_post(http: httpx.AsyncClient, key: str) -> Post:
    async def post(path: str, body: Any) -> tuple[int, dict[str, str], bytes]:
        response = await http.post(path, json=body, headers={"X-Api-Key": key})
        return response.status_code, dict(response.headers), response.content

    return post


@dataclass
class LoadResult:
    attempts: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    doctor_ms: list[float] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ms = sorted(self.doctor_ms)
        return {
            "attempts": self.attempts,
            "statuses": dict(self.statuses),
            "codes": dict(self.codes),
            "doctor_calls": len(ms),
            "doctor_p50_ms": round(statistics.median(ms), 1) if ms else None,
            "doctor_p95_ms": round(ms[int(len(ms) * 0.95) - 1], 1) if ms else None,
        }


async def run_load(
    api_url: str,
    key: str,
    *,
    concurrency: int,
    seconds: float,
    write_every: int = 5,
    client: str = "lean",
) -> LoadResult:
    result = LoadResult()
    deadline = time.monotonic() + seconds
    async with contextlib.AsyncExitStack() as stack:
        clients = await posters(stack, api_url, key, concurrency, client)

        async def worker(n: int) -> None:
            post = clients[n]
            while time.monotonic() < deadline:
                result.attempts += 1
                i = result.attempts
                if write_every and i % write_every == 0:
                    route, body = REFUSED_WRITES[(n + i) % len(REFUSED_WRITES)]
                else:
                    route, body = "doctor", {}
                started = time.perf_counter()
                try:
                    status, headers, content = await post(f"{PREFIX}/{route}", body)
                except (httpx.HTTPError, OSError, asyncio.IncompleteReadError) as exc:
                    result.statuses[type(exc).__name__] += 1
                    continue
                result.statuses[str(status)] += 1
                result.request_ids.append(headers.get("x-request-id", ""))
                if status == 200 and route == "doctor":
                    result.doctor_ms.append((time.perf_counter() - started) * 1000)
                elif status != 200:
                    result.codes[json.loads(content).get("code", "?")] += 1

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return result


IDLE_CALLS = 10
IDLE_PAUSE_SECONDS = 1.0  # each idle call's record is made in the pause after it


async def idle_doctor_ms(api_url: str, key: str, client: str = "lean") -> list[float]:
    """The doctor one call at a time, each after a pause: the idle figure the load is held to
    (with the load's own kind of client)."""
    samples = []
    async with contextlib.AsyncExitStack() as stack:
        (post,) = await posters(stack, api_url, key, 1, client)
        for _ in range(IDLE_CALLS + 1):  # the first warms up
            await asyncio.sleep(IDLE_PAUSE_SECONDS)
            started = time.perf_counter()
            status, _, content = await post(f"{PREFIX}/doctor", {})
            if status != 200:
                raise RuntimeError(f"the idle doctor answered {status}: {content[:200]!r}")
            samples.append((time.perf_counter() - started) * 1000)
    return samples[1:]


def readouts_read(api_url: str) -> int:
    """How many readouts the API read (its ``/metrics``): fewer than calls, which share them."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{api_url}/metrics", timeout=10).text
    return sum(
        int(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "restate_recovery_doctor_readouts_total"
    )


async def doctor_runs() -> int:
    """How many ``restate-doctor`` runs Prefect holds (each records one or more readouts)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async with get_client() as client:
        return await client.count_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["restate-doctor"]))
        )


def local_run(
    concurrency: int, seconds: float, write_every: int = 5, client: str = "lean"
) -> dict[str, Any]:
    """Start the whole stack on loopback, load it, and count the audit rows."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from sqlmodel import Session

    from restate_recovery import store
    from restate_recovery.settings import DATA_DIR
    from tests.support.local_stack import full_stack

    work = Path(tempfile.mkdtemp(prefix="load-"))
    try:
        with full_stack(work, DATA_DIR / "prefect-template") as stack:
            api = stack.api
            key = api.create_key(actor="load", role="ops", permissions=["system:operate"])
            idle = asyncio.run(idle_doctor_ms(api.url, key, client))  # before the load and after
            result = asyncio.run(  # it: the machine's own drift is in both figures alike
                run_load(
                    api.url,
                    key,
                    concurrency=concurrency,
                    seconds=seconds,
                    write_every=write_every,
                    client=client,
                )
            )
            idle += asyncio.run(idle_doctor_ms(api.url, key, client))
            readouts = readouts_read(api.url)
            api.stop()  # it first records the doctor answers still pending (then rows are final)
            with Session(store.engine_for(stack.env["RECOVERY_DATABASE_URL"])) as session:
                rows = store.list_attempts(session=session, limit=1_000_000)
            records = asyncio.run(doctor_runs())
            summary = result.summary()
            idle_p50 = statistics.median(idle)
            return {
                **summary,
                "idle_doctor_p50_ms": round(idle_p50, 1),
                "loaded_p50_over_idle_p50": round((summary["doctor_p50_ms"] or 0) / idle_p50, 2),
                "idle_doctor_calls": len(idle),
                "attempts_with_idle": result.attempts + len(idle) + 2,
                "client": client,
                "concurrency": concurrency,
                "seconds": seconds,
                "audit_rows": len(rows),
                "audit_rows_unfinished": sum(1 for r in rows if r.finished_at is None),
                "doctor_rows_without_record": sum(
                    1 for r in rows if r.route == "doctor" and r.flow_run_id is None
                ),
                "doctor_readouts_read": readouts,
                "restate_doctor_runs": records,
            }
    finally:
        if os.environ.get("RECOVERY_KEEP_LOAD_DIR"):
            print(f"kept {work}")  # noqa: T201
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api")
    parser.add_argument("--key")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument(
        "--writes-every", type=int, default=5, help="every Nth call a refused write (0: none)"
    )
    parser.add_argument(
        "--client",
        choices=["lean", "httpx"],
        default="lean",
        help="the clients' HTTP: lean (HTTP/1.1 written here, the default) or httpx",
    )
    args = parser.parse_args()
    if args.api is None:
        summary = local_run(args.concurrency, args.seconds, args.writes_every, args.client)
    else:
        if not args.api.startswith(("http://127.", "http://localhost", "http://[::1]")):
            raise SystemExit("load runs against loopback only")
        result = asyncio.run(
            run_load(
                args.api,
                args.key,
                concurrency=args.concurrency,
                seconds=args.seconds,
                write_every=args.writes_every,
                client=args.client,
            )
        )
        summary = result.summary()
    print(json.dumps(summary, indent=2))  # noqa: T201 - a command's output


if __name__ == "__main__":
    main()
