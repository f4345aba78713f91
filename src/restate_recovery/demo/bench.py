"""Benchmark: the doctor and the runbooks against the raw engine floor, in one run, on one machine.

    .venv/bin/python -m restate_recovery.demo.bench [--sizes 1000,10000] [--repeats 7]

Starts its own restate-server, sample service, Prefect server (pre-migrated template) and operator
API on free loopback ports; seeds invocations (70 % succeed, 20 % terminal failure, 10 % sleeping);
then prints, per size, the median (and min) wall time of each measurement. It prints numbers;
nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

PREFIX = "/api/v2/admin/operator/restate"
WORKFLOW = "IdentityRecoveryWorkflow"
RAW_PROBES: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "ingress /restate/health": ("ingress", "/restate/health", None),
    "admin /health": ("admin", "/health", None),
    "admin /version": ("admin", "/version", None),
    "admin /deployments": ("admin", "/deployments", None),
    "admin /services": ("admin", "/services", None),
}


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:9.1f} {min(samples) * 1000:9.1f}"


async def timed(repeats: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


def get(http: httpx.AsyncClient, url: str) -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        return await http.get(url)

    return call


def query(http: httpx.AsyncClient, restate: Any, sql: str) -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        return await http.post(
            f"{restate.admin_url}/query",
            json={"query": sql},
            headers={"accept": "application/json"},
        )

    return call


async def seed(ingress_url: str, count: int) -> None:
    gate = asyncio.Semaphore(32)
    async with httpx.AsyncClient(base_url=ingress_url, timeout=60) as http:

        async def one(n: int) -> None:
            mode = "fail" if n % 10 in (1, 2) else "sleep" if n % 10 == 3 else "succeed"
            async with gate:
                await http.post(
                    f"/{WORKFLOW}/seed_{uuid.uuid4().hex[:12]}/run/send",
                    json={"mode": mode, "seconds": 3600},
                )

        await asyncio.gather(*(one(n) for n in range(count)))


def main() -> None:  # noqa: PLR0915 - a linear script
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000", help="invocation counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    from sqlmodel import Session  # noqa: F401 - warm the imports before timing

    from restate_recovery.demo.local_stack import full_stack, restate_cli_binary
    from restate_recovery.settings import DATA_DIR

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        with full_stack(work, DATA_DIR / "prefect-template") as stack:
            os.environ.update(stack.env)
            key = stack.api.create_key(actor="bench", role="ops", permissions=["system:operate"])
            asyncio.run(
                run_all(
                    args,
                    stack.restate,
                    stack.service,
                    stack.api,
                    key,
                    stack.env,
                    str(restate_cli_binary()),
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def run_all(
    args: argparse.Namespace,
    restate: Any,
    service: Any,
    api: Any,
    key: str,
    env: dict[str, str],
    restate_cli: str,
) -> None:
    from restate_recovery.demo.local_stack import submit_workflow, wait_for_status
    from restate_recovery.doctor import COUNT_BY_STATUS_SQL, RECENT_FAILURES_SQL, resolve_endpoints
    from restate_recovery.doctor import run_doctor as library_doctor
    from restate_recovery.runbooks import run_flow
    from restate_recovery.settings import get_settings

    get_settings.cache_clear()
    endpoints = resolve_endpoints(get_settings())
    repeats = args.repeats
    cli = str(Path(sys.executable).parent / "restate-recovery")
    bases = {"admin": restate.admin_url, "ingress": restate.ingress_url}
    seeded = 0
    print(f"machine: {os.cpu_count()} cores; repeats per row: {repeats}; ms: median, min")  # noqa: T201
    for size in [int(s) for s in args.sizes.split(",")]:
        started = time.perf_counter()
        await seed(restate.ingress_url, size - seeded)
        seeded = size
        await asyncio.sleep(2)
        print(f"\n== {size} invocations (seeded in {time.perf_counter() - started:.1f} s)")  # noqa: T201
        rows: list[tuple[str, list[float]]] = []
        async with httpx.AsyncClient(timeout=60) as http:
            for label, (base, path, _) in RAW_PROBES.items():
                rows.append((f"raw {label}", await timed(repeats, get(http, bases[base] + path))))
            for label, sql in (("counts", COUNT_BY_STATUS_SQL), ("failures", RECENT_FAILURES_SQL)):
                rows.append(
                    (f"raw admin /query {label}", await timed(repeats, query(http, restate, sql)))
                )
            slowest = max(statistics.median(s) for _, s in rows)
            rows.append(
                ("doctor: library call", await timed(repeats, lambda: library_doctor(endpoints)))
            )
            rows.append(
                ("doctor: Prefect flow run", await timed(repeats, lambda: run_flow("doctor")))
            )

            async def cli_doctor() -> None:
                await asyncio.to_thread(
                    subprocess.run,
                    [cli, "doctor", "--json"],
                    env=env,
                    capture_output=True,
                    check=True,
                )

            rows.append(("doctor: CLI (running Prefect server)", await timed(repeats, cli_doctor)))

            async def route_doctor() -> None:
                response = await http.post(
                    f"{api.url}{PREFIX}/doctor", json={}, headers={"X-Api-Key": key}
                )
                response.raise_for_status()

            await route_doctor()  # warm
            rows.append(("doctor: HTTP route (warm)", await timed(repeats, route_doctor)))

            async def restate_cli_readout() -> None:
                for command in (
                    ["deployments", "list"],
                    ["services", "list"],
                    ["sql", COUNT_BY_STATUS_SQL],
                ):
                    await asyncio.to_thread(
                        subprocess.run,
                        [restate_cli, *command],
                        env={**env, "RESTATE_ADMIN_URL": restate.admin_url},
                        capture_output=True,
                        check=False,
                    )

            rows.append(("same readout with the restate CLI", await timed(3, restate_cli_readout)))

            async def recover_once() -> float:
                key_ = f"bench_{uuid.uuid4().hex[:10]}"
                invocation_id = submit_workflow(restate.ingress_url, key_, "fail")
                await asyncio.to_thread(
                    wait_for_status, restate.admin_url, invocation_id, "completed"
                )
                started = time.perf_counter()
                response = await http.post(
                    f"{api.url}{PREFIX}/recover-stuck-workflow",
                    json={"serviceName": WORKFLOW, "serviceKey": key_},
                    headers={"X-Api-Key": key},
                )
                response.raise_for_status()
                return time.perf_counter() - started

            recover_samples = [await recover_once() for _ in range(repeats)]
            rows.append(("recover-stuck-workflow end to end (HTTP)", recover_samples))

            async def redeploy() -> None:
                response = await http.post(
                    f"{api.url}{PREFIX}/force-redeploy",
                    json={"serviceUrl": service.url},
                    headers={"X-Api-Key": key},
                )
                response.raise_for_status()

            rows.append(("force-redeploy end to end (HTTP)", await timed(repeats, redeploy)))
        for label, samples in rows:
            print(f"{label:45s} {ms(samples)}")  # noqa: T201
        doctor_route = statistics.median(dict(rows)["doctor: HTTP route (warm)"])
        print(  # noqa: T201
            f"{'slowest raw probe (median)':45s} {slowest * 1000:9.1f}\n"
            f"{'HTTP doctor / slowest raw probe':45s} {doctor_route / slowest:9.1f}x"
        )
    await cleanup_of_100(restate, service, api, key)
    status = Path(f"/proc/{api.process.pid}/status").read_text()
    peak = next(line for line in status.splitlines() if line.startswith("VmHWM"))
    print(f"\noperator API process peak memory: {peak.split(':', 1)[1].strip()}")  # noqa: T201


async def cleanup_of_100(restate: Any, service: Any, api: Any, key: str) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        for n in range(100):
            response = await http.post(
                f"{restate.admin_url}/deployments",
                json={"uri": f"{service.url}/stale{n}/", "force": True},
            )
            response.raise_for_status()
        listed = (await http.get(f"{restate.admin_url}/deployments")).json()["deployments"]
        started = time.perf_counter()
        response = await http.post(
            f"{api.url}{PREFIX}/cleanup-stale-deployments",
            json={"serviceUrl": service.url + "/", "forceDrain": True},
            headers={"X-Api-Key": key},
        )
        elapsed = time.perf_counter() - started
        left = (await http.get(f"{restate.admin_url}/deployments")).json()["deployments"]
    print(  # noqa: T201
        f"\ncleanup of {len(listed) - 1} stale deployments (HTTP, forceDrain): "
        f"{elapsed * 1000:.0f} ms, answer {response.status_code}, {len(left)} left"
    )


if __name__ == "__main__":
    main()
