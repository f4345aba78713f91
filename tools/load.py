"""A bounded load run against the operator API on loopback: N concurrent doctor calls for a
fixed time, plus a mix of refused writes. Prints what came back; changes nothing in Restate.

    .venv/bin/python -m tools.load [--concurrency 50] [--seconds 30]
        starts its own restate-server, sample service, Prefect server and operator API on free
        loopback ports, runs the load, and checks one audit row per attempt;
    .venv/bin/python -m tools.load --api URL --key KEY ...   uses a running API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

PREFIX = "/api/v2/admin/operator/restate"
REFUSED_WRITES: list[tuple[str, Any]] = [
    ("recover-stuck-workflow", {"serviceName": "Bad Name", "serviceKey": "k"}),  # 400
    ("cleanup-stale-deployments", {"serviceUrl": "http://127.0.0.1:1/none/"}),  # 404
    ("recover-stuck-workflow", {"serviceName": "NoSuchWorkflow", "serviceKey": "k"}),  # 409
]


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
    api_url: str, key: str, *, concurrency: int, seconds: float, write_every: int = 5
) -> LoadResult:
    result = LoadResult()
    deadline = time.monotonic() + seconds
    # One client (one kept connection) per worker: a shared pool of 50 costs httpcore more CPU
    # per request than the API's own answer (it scans every connection on each request).
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=api_url, timeout=120, limits=one)
            )
            for _ in range(concurrency)
        ]

        async def worker(n: int) -> None:
            http = clients[n]
            while time.monotonic() < deadline:
                result.attempts += 1
                i = result.attempts
                if write_every and i % write_every == 0:
                    route, body = REFUSED_WRITES[(n + i) % len(REFUSED_WRITES)]
                else:
                    route, body = "doctor", {}
                started = time.perf_counter()
                try:
                    response = await http.post(
                        f"{PREFIX}/{route}", json=body, headers={"X-Api-Key": key}
                    )
                except httpx.HTTPError as exc:
                    result.statuses[type(exc).__name__] += 1
                    continue
                result.statuses[str(response.status_code)] += 1
                result.request_ids.append(response.headers.get("x-request-id", ""))
                if response.status_code == 200 and route == "doctor":
                    result.doctor_ms.append((time.perf_counter() - started) * 1000)
                elif response.status_code != 200:
                    result.codes[response.json().get("code", "?")] += 1

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return result


IDLE_CALLS = 10
IDLE_PAUSE_SECONDS = 1.0  # each idle call's record is made in the pause after it


async def idle_doctor_ms(api_url: str, key: str) -> list[float]:
    """The doctor one call at a time, each after a pause: the idle figure the load is held to."""
    samples = []
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as http:
        for _ in range(IDLE_CALLS + 1):  # the first warms up
            await asyncio.sleep(IDLE_PAUSE_SECONDS)
            started = time.perf_counter()
            response = await http.post(f"{PREFIX}/doctor", json={}, headers={"X-Api-Key": key})
            response.raise_for_status()
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


def local_run(concurrency: int, seconds: float, write_every: int = 5) -> dict[str, Any]:
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
            idle = asyncio.run(idle_doctor_ms(api.url, key))  # before the load and after it:
            result = asyncio.run(  # the machine's own drift is in both figures alike
                run_load(
                    api.url, key, concurrency=concurrency, seconds=seconds, write_every=write_every
                )
            )
            idle += asyncio.run(idle_doctor_ms(api.url, key))
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
    args = parser.parse_args()
    if args.api is None:
        summary = local_run(args.concurrency, args.seconds, args.writes_every)
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
            )
        )
        summary = result.summary()
    print(json.dumps(summary, indent=2))  # noqa: T201 - a command's output


if __name__ == "__main__":
    main()
