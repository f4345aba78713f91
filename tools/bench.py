"""Benchmark: the doctor and the runbooks against the raw engine floor, in one run, on one machine.

    .venv/bin/python -m tools.bench [--sizes 1000,10000,50000] [--repeats 7]

Starts its own restate-server, sample service, Prefect server (pre-migrated template) and operator
API on free loopback ports; seeds invocations (70 % succeed, 20 % terminal failure, 10 % sleeping);
then prints, per size, the median (and min) wall time of each measurement, and at the end the
doctor with 101 deployments, the cleanup of 100 stale deployments, the CLI with no Prefect server
configured, and the API's peak memory. It prints numbers; nothing here is asserted.

The raw floor is plain HTTP with a fresh connection per request (as curl or the ``restate`` CLI
do), per doctor probe: ingress health; admin health then version; deployments; services; and the
invocation table, whose probe is two SQL queries sent at once (counts by status, recent failures).
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
QUERY_HEADERS = {"accept": "application/json"}

Call = Callable[[], Awaitable[Any]]
COUNTS_ALONE = "  (one query alone: counts by status)"


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:9.1f} {min(samples) * 1000:9.1f}"


async def timed(repeats: int, call: Call) -> list[float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


PAUSE_SECONDS = 0.3
# After each HTTP doctor call is recorded, the API and the Prefect server go on working for
# about a second (the run's events, logs and state changes: CPU the next measurement would share
# on a 2-core machine). Every round therefore starts on a quiet machine.
QUIET_SECONDS = 2.0


async def in_turns(calls: dict[str, Call], repeats: int) -> dict[str, list[float]]:
    """Each call once per round, ``repeats`` rounds after a warm-up round, each call after the
    same pause. A call that returns a float reports its own duration (seconds)."""
    samples: dict[str, list[float]] = {label: [] for label in calls}
    for round_ in range(repeats + 1):
        for label, call in calls.items():
            await asyncio.sleep(PAUSE_SECONDS)
            started = time.perf_counter()
            result = await call()
            elapsed = result if isinstance(result, float) else time.perf_counter() - started
            if round_:
                samples[label].append(elapsed)
    return samples


async def seed(ingress_url: str, count: int, start: int = 0) -> None:
    gate = asyncio.Semaphore(64)
    async with httpx.AsyncClient(base_url=ingress_url, timeout=120) as http:

        async def one(n: int) -> None:
            mode = "fail" if n % 10 in (1, 2) else "sleep" if n % 10 == 3 else "succeed"
            async with gate:
                response = await http.post(
                    f"/{WORKFLOW}/seed_{uuid.uuid4().hex[:12]}/run/send",
                    json={"mode": mode, "seconds": 3600},
                )
                response.raise_for_status()

        await asyncio.gather(*(one(n) for n in range(start, start + count)))


async def settle(admin_url: str, timeout: float = 300) -> None:
    """Wait until no seeded invocation is still on its way (only the sleepers stay active)."""
    busy = (
        "SELECT count(*) AS n FROM sys_invocation "
        "WHERE status IN ('pending', 'scheduled', 'ready', 'running', 'backing-off')"
    )
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=60, headers={"connection": "close"}) as http:
        while time.monotonic() < deadline:
            response = await http.post(
                f"{admin_url}/query", json={"query": busy}, headers=QUERY_HEADERS
            )
            if response.json()["rows"][0].get("n", 0) == 0:
                return
            await asyncio.sleep(1)


def raw_probes(http: httpx.AsyncClient, admin: str, ingress: str) -> dict[str, Call]:
    """The doctor's five probes as plain HTTP (component name -> one call)."""
    from restate_recovery.doctor.probes import COUNT_BY_STATUS_SQL, RECENT_FAILURES_SQL

    def query(sql: str) -> Awaitable[httpx.Response]:
        return http.post(f"{admin}/query", json={"query": sql}, headers=QUERY_HEADERS)

    async def admin_probe() -> None:
        await http.get(f"{admin}/health")
        await http.get(f"{admin}/version")

    async def invocations() -> None:
        await asyncio.gather(query(COUNT_BY_STATUS_SQL), query(RECENT_FAILURES_SQL))

    return {
        "ingress: GET /restate/health": lambda: http.get(f"{ingress}/restate/health"),
        "admin: GET /health, then /version": admin_probe,
        "deployments: GET /deployments": lambda: http.get(f"{admin}/deployments"),
        "services: GET /services": lambda: http.get(f"{admin}/services"),
        "invocations: both queries at once": invocations,
        COUNTS_ALONE: lambda: query(COUNT_BY_STATUS_SQL),
        "  (one query alone: recent failures)": lambda: query(RECENT_FAILURES_SQL),
    }


class Bench:
    def __init__(self, stack: Any, key: str, repeats: int, turns: int) -> None:
        self.stack = stack
        self.key = key
        self.repeats = repeats
        self.turns = turns
        self.cli = str(Path(sys.executable).parent / "restate-recovery")

    async def post(self, http: httpx.AsyncClient, route: str, body: Any, **headers: str) -> Any:
        response = await http.post(
            f"{self.stack.api.url}{PREFIX}/{route}",
            json=body,
            headers={"X-Api-Key": self.key, **headers},
        )
        response.raise_for_status()
        return response

    def audit_finished(self, request_id: str) -> bool:
        from sqlmodel import Session, col, select

        from restate_recovery import store

        url = self.stack.env["RECOVERY_DATABASE_URL"]
        with Session(store.engine_for(url)) as session:
            statement = select(store.OperationAudit).where(
                col(store.OperationAudit.request_id) == request_id
            )
            row = session.exec(statement).first()
            return row is not None and row.finished_at is not None

    async def route_doctor_once(self, http: httpx.AsyncClient) -> tuple[float, float]:
        """(until answered, until its flow run is recorded): waits for the record, so the next
        measurement starts on a quiet API."""
        request_id = f"bench-{uuid.uuid4().hex[:12]}"
        started = time.perf_counter()
        await self.post(http, "doctor", {}, **{"X-Request-Id": request_id})
        answered = time.perf_counter() - started
        while not await asyncio.to_thread(self.audit_finished, request_id):
            await asyncio.sleep(0.005)
        return answered, time.perf_counter() - started

    async def cli_doctor(self, env: dict[str, str]) -> tuple[float, float]:
        """(until the readout is on stdout, until the command exits)."""
        return await asyncio.to_thread(self.timed_cli_doctor, env)

    def remote_env(self) -> dict[str, str]:
        """The CLI's remote mode: only the operator API's URL and key (no Prefect, no Restate)."""
        env = {
            k: v
            for k, v in self.stack.env.items()
            if not k.startswith(("RESTATE_", "RECOVERY_", "PREFECT_"))
        }
        return {**env, "DALP_API_URL": self.stack.api.url, "DALP_API_KEY": self.key}

    async def curl_doctor(self) -> None:
        await asyncio.to_thread(
            subprocess.run,
            [
                "curl", "-sS", "-o", "/dev/null", "-X", "POST",
                f"{self.stack.api.url}{PREFIX}/doctor",
                "-H", f"X-Api-Key: {self.key}", "-H", "Content-Type: application/json",
                "-d", "{}",
            ],
            check=True,
        )  # fmt: skip

    def timed_cli_doctor(self, env: dict[str, str]) -> tuple[float, float]:
        started = time.perf_counter()
        process = subprocess.Popen(
            [self.cli, "doctor", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert process.stdout is not None
        process.stdout.read(1)
        answered = time.perf_counter() - started
        process.stdout.read()
        if process.wait() != 0:
            raise RuntimeError("restate-recovery doctor failed")
        return answered, time.perf_counter() - started

    async def remote_cli_exit(self) -> float:
        return (await self.cli_doctor(self.remote_env()))[1]

    async def restate_cli_readout(self) -> None:
        from restate_recovery.doctor.probes import COUNT_BY_STATUS_SQL
        from tests.support.local_stack import restate_cli_binary

        binary = str(restate_cli_binary())
        env = {**self.stack.env, "RESTATE_ADMIN_URL": self.stack.restate.admin_url}
        for command in (
            ["deployments", "list"],
            ["services", "list"],
            ["sql", COUNT_BY_STATUS_SQL],
        ):
            await asyncio.to_thread(
                subprocess.run, [binary, *command], env=env, capture_output=True, check=False
            )

    async def recover_once(self, http: httpx.AsyncClient) -> float:
        from tests.support.local_stack import submit_workflow, wait_for_status

        restate = self.stack.restate
        key = f"bench_{uuid.uuid4().hex[:10]}"
        invocation_id = submit_workflow(restate.ingress_url, key, "fail")
        await asyncio.to_thread(wait_for_status, restate.admin_url, invocation_id, "completed")
        started = time.perf_counter()
        await self.post(
            http, "recover-stuck-workflow", {"serviceName": WORKFLOW, "serviceKey": key}
        )
        return time.perf_counter() - started

    async def size(self, size: int, seeded_in: float) -> None:
        from restate_recovery.doctor.probes import ProbeClients, resolve_endpoints, run_doctor
        from restate_recovery.runbooks import DOCTOR
        from restate_recovery.settings import get_settings

        restate, repeats = self.stack.restate, self.repeats
        endpoints = resolve_endpoints(get_settings())
        kept = ProbeClients(endpoints)
        rows: list[tuple[str, list[float]]] = []
        fresh = httpx.AsyncClient(timeout=60, headers={"connection": "close"})
        async with fresh, httpx.AsyncClient(timeout=120) as http:
            # The floor, the library call and the route in turns, each after the same pause, so
            # that all three meet the same conditions (Restate and the CPU cool down in a pause).
            recorded: list[float] = []

            async def route() -> float:
                answered, until_recorded = await self.route_doctor_once(http)
                recorded.append(until_recorded)
                await asyncio.sleep(QUIET_SECONDS)  # not timed: see QUIET_SECONDS
                return answered

            turns: dict[str, Call] = {
                **{
                    f"raw {k}": v
                    for k, v in raw_probes(fresh, restate.admin_url, restate.ingress_url).items()
                },
                "raw counts query, reused keep-alive connection": raw_probes(
                    http, restate.admin_url, restate.ingress_url
                )[COUNTS_ALONE],
                "doctor: library call": lambda: run_doctor(endpoints),
                "doctor: library call, kept clients (as the API)": lambda: run_doctor(
                    endpoints, clients=kept
                ),
                "doctor: HTTP route, answered (warm)": route,
            }
            samples = await in_turns(turns, self.turns)
            rows.extend(samples.items())
            rows.append(("doctor: HTTP route, run recorded", recorded[1:]))  # 1st: warm-up
            floor = max(
                statistics.median(v)
                for k, v in samples.items()
                if k.startswith("raw ") and not k.startswith("raw  ") and "keep-alive" not in k
            )
            answered = samples["doctor: HTTP route, answered (warm)"]
            doctor_flow: Any = DOCTOR.flow()

            async def flow_run() -> None:
                await doctor_flow()

            rows.append(("doctor: Prefect flow run", await timed(repeats, flow_run)))
            remote = await in_turns(
                {
                    "doctor: curl of the route (warm API)": self.curl_doctor,
                    "doctor: CLI remote mode, until it exits": lambda: self.remote_cli_exit(),
                },
                repeats,
            )
            rows.extend(remote.items())
            cli = [await self.cli_doctor(self.stack.env) for _ in range(repeats)]
            rows.append(("doctor: CLI local mode, readout printed", [a for a, _ in cli]))
            rows.append(("doctor: CLI local mode, exit (run recorded)", [t for _, t in cli]))
            rows.append(("  (python -c 'import prefect', a new process)", await timed(
                repeats, lambda: asyncio.to_thread(
                    subprocess.run, [sys.executable, "-c", "import prefect"], check=True
                )
            )))  # fmt: skip
            rows.append(
                ("same readout with the restate CLI", await timed(3, self.restate_cli_readout))
            )
            recover = [await self.recover_once(http) for _ in range(repeats)]
            rows.append(("recover-stuck-workflow end to end (HTTP)", recover))
            body = {"serviceUrl": self.stack.service.url}
            redeploy = await timed(repeats, lambda: self.post(http, "force-redeploy", body))
            rows.append(("force-redeploy end to end (HTTP)", redeploy))
        await kept.aclose()
        print(f"\n== {size} invocations (seeded in {seeded_in:.0f} s); ms: median, min")  # noqa: T201
        for label, row in rows:
            print(f"{label:48s} {ms(row)}")  # noqa: T201
        answered_median = statistics.median(answered)
        print(  # noqa: T201
            f"{'slowest raw probe (median)':48s} {floor * 1000:9.1f}\n"
            f"{'HTTP doctor answered / slowest raw probe':48s} {answered_median / floor:9.2f}x"
        )

    async def deployments_and_cleanup(self) -> None:
        """The doctor with 101 deployments, then the cleanup of the 100 stale ones."""
        from restate_recovery.doctor.probes import resolve_endpoints, run_doctor
        from restate_recovery.settings import get_settings

        restate, service = self.stack.restate, self.stack.service
        endpoints = resolve_endpoints(get_settings())
        async with httpx.AsyncClient(timeout=120) as http:
            before = await timed(self.repeats, lambda: run_doctor(endpoints))
            for n in range(100):
                response = await http.post(
                    f"{restate.admin_url}/deployments",
                    json={"uri": f"{service.url}/stale{n}/", "force": True},
                )
                response.raise_for_status()
            listed = (await http.get(f"{restate.admin_url}/deployments")).json()["deployments"]
            after = await timed(self.repeats, lambda: run_doctor(endpoints))
            answered = [(await self.route_doctor_once(http))[0] for _ in range(self.repeats)]
            started = time.perf_counter()
            response = await http.post(
                f"{self.stack.api.url}{PREFIX}/cleanup-stale-deployments",
                json={"serviceUrl": service.url + "/", "forceDrain": True},
                headers={"X-Api-Key": self.key},
            )
            elapsed = time.perf_counter() - started
            left = (await http.get(f"{restate.admin_url}/deployments")).json()["deployments"]
        print(  # noqa: T201
            f"\ndoctor library call with 1 deployment:    {ms(before)}\n"
            f"doctor library call with {len(listed)} deployments: {ms(after)}\n"
            f"doctor HTTP route with {len(listed)} deployments:   {ms(answered)}\n"
            f"cleanup of {len(listed) - 1} stale deployments (HTTP, forceDrain): "
            f"{elapsed * 1000:.0f} ms, answer {response.status_code}, {len(left)} left"
        )

    def embedded_cli(self, work: Path) -> None:
        """The CLI with no PREFECT_API_URL: Prefect's temporary server, on a new PREFECT_HOME."""
        env = {k: v for k, v in self.stack.env.items() if k != "PREFECT_API_URL"}
        env["PREFECT_HOME"] = str(work / "embedded-home")
        for run in ("first run on a new PREFECT_HOME", "second run"):
            answered, total = self.timed_cli_doctor(env)
            print(  # noqa: T201
                f"CLI doctor, no Prefect server, {run}: readout printed after {answered:.1f} s, "
                f"exit (run recorded) after {total:.1f} s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000", help="invocation counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=7, help="samples per row")
    parser.add_argument(
        "--turns",
        type=int,
        default=21,
        help="rounds of the raw probes, the library call and the HTTP route, measured in turns",
    )
    args = parser.parse_args()
    from sqlmodel import Session  # noqa: F401 - warm the imports before timing

    from restate_recovery.settings import DATA_DIR
    from tests.support.local_stack import full_stack

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        with full_stack(work, DATA_DIR / "prefect-template") as stack:
            os.environ.update(stack.env)
            key = stack.api.create_key(actor="bench", role="ops", permissions=["system:operate"])
            bench = Bench(stack, key, args.repeats, args.turns)
            print(  # noqa: T201
                f"machine: {os.cpu_count()} cores; samples per row: {args.turns} for the rows "
                f"measured in turns, {args.repeats} for the others"
            )
            asyncio.run(run_sizes(bench, [int(s) for s in args.sizes.split(",")]))
            asyncio.run(bench.deployments_and_cleanup())
            status = Path(f"/proc/{stack.api.process.pid}/status").read_text()  # type: ignore[union-attr]
            peak = next(line for line in status.splitlines() if line.startswith("VmHWM"))
            print(f"operator API process peak memory: {peak.split(':', 1)[1].strip()}")  # noqa: T201
            bench.embedded_cli(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def run_sizes(bench: Bench, sizes: list[int]) -> None:
    from restate_recovery.settings import get_settings

    get_settings.cache_clear()
    seeded = 0
    for size in sizes:
        started = time.perf_counter()
        await seed(bench.stack.restate.ingress_url, size - seeded, start=seeded)
        await settle(bench.stack.restate.admin_url)
        seeded = size
        await bench.size(size, time.perf_counter() - started)


if __name__ == "__main__":
    main()
