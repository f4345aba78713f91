"""Benchmark: recover-stuck-workflows over many keys, and resume-paused-invocations over many
invocations, each beside the floor: the admin calls that do the same job, made directly with
httpx at the same concurrency, in the same run.

    .venv/bin/python -m tools.bench_bulk [--keys 1000] [--paused 200] [--concurrency 8]

Starts its own restate-server and sample service on loopback, and an audit database (SQLite) of
its own. The floor per key: read its runs, its state and its run's journal (for timers), clear
the state with its version, read it back, purge the run. The runbook per key reads what it plans
on for 100 keys at once, then checks the key's runs again before the clear, clears the state with
the planned version, reads the state back with the runs (checked again before the purge), purges,
and takes its lock and writes its audit row (start and finish). The floor per paused invocation:
resume it, then one read-back of all; the runbook resumes one at a time, so its floor does too.
Prints seconds, the ratios and the process's peak memory; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from restate_recovery.settings import DATA_DIR

WORKFLOW = "IdentityRecoveryWorkflow"
FLAKY = "FlakyWorkflow"
JSON = {"accept": "application/json"}


async def gather_bounded(concurrency: int, calls: list[Any]) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(call: Any) -> Any:
        async with gate:
            return await call()

    return await asyncio.gather(*(one(c) for c in calls))


async def submit_many(ingress: str, keys: list[str], mode: str, workflow: str) -> list[str]:
    async with httpx.AsyncClient(base_url=ingress, timeout=30) as http:

        async def send(key: str) -> str:
            response = await http.post(f"/{workflow}/{key}/run/send", json={"mode": mode})
            response.raise_for_status()
            return str(response.json()["invocationId"])

        return await gather_bounded(16, [lambda k=k: send(k) for k in keys])


async def wait_for(admin: str, sql: str, count: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=admin, timeout=30, headers=JSON) as http:
        while True:
            rows = (await http.post("/query", json={"query": sql})).json()["rows"]
            if rows and rows[0]["n"] >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(sql)
            await asyncio.sleep(0.5)


async def floor_recover(admin: str, keys: list[str], concurrency: int) -> None:
    from restate_recovery.runbooks.recover import read_back_delays, state_version

    async with httpx.AsyncClient(base_url=admin, timeout=30, headers=JSON) as http:

        async def query(sql: str) -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = (await http.post("/query", json={"query": sql})).json()[
                "rows"
            ]
            return rows

        async def one(key: str) -> None:
            runs = await query(
                "SELECT id, status, completion_result, created_at FROM sys_invocation WHERE "
                f"target_service_name = '{WORKFLOW}' AND target_service_key = '{key}' "
                "AND target_handler_name = 'run'"
            )
            state_sql = (
                f"SELECT key, value FROM state WHERE service_name = '{WORKFLOW}' "
                f"AND service_key = '{key}'"
            )
            state = await query(state_sql)
            ids = ", ".join(f"'{r['id']}'" for r in runs)
            await query(
                f"SELECT id, entry_json FROM sys_journal WHERE id IN ({ids}) "
                "AND entry_type = 'Command: Sleep'"
            )
            await http.post(
                f"/services/{WORKFLOW}/state",
                json={"object_key": key, "new_state": {}, "version": state_version(state)},
            )
            for delay in read_back_delays():  # the same pauses as the runbook's
                if not await query(state_sql):
                    break
                await asyncio.sleep(delay)
            for run in runs:
                await http.patch(f"/invocations/{run['id']}/purge")

        await gather_bounded(concurrency, [lambda k=k: one(k) for k in keys])


async def ours_recover(admin: str, count: int, concurrency: int, since: str) -> Any:
    from restate_recovery.client import RestateAdminClient
    from restate_recovery.runbooks import bulk
    from restate_recovery.schemas import RecoverStuckWorkflowsRequest

    request = RecoverStuckWorkflowsRequest(
        service_name=WORKFLOW,
        failed_since=since,
        limit=count,
        rate=200.0,
        concurrency=concurrency,
    )
    async with RestateAdminClient.connect(admin, timeout=30) as client:
        started = time.perf_counter()  # bulk.write's two steps, timed apart
        plan = await bulk.plan_batch(client, request, timeout=30)
        timed("  of which planning", started)
        return await bulk.execute_batch(client, plan, request, timeout=30, approved=None)


async def floor_resume(admin: str, ids: list[str]) -> None:
    async with httpx.AsyncClient(base_url=admin, timeout=30, headers=JSON) as http:
        for invocation_id in ids:  # one at a time, as the runbook does
            await http.patch(f"/invocations/{invocation_id}/resume", params={"deployment": "keep"})
        listed = ", ".join(f"'{i}'" for i in ids)
        await http.post("/query", json={"query": f"SELECT id, status FROM sys_invocation "
                                                  f"WHERE id IN ({listed})"})  # fmt: skip


async def ours_resume(admin: str, count: int) -> Any:
    from restate_recovery.client import RestateAdminClient
    from restate_recovery.runbooks import resume
    from restate_recovery.schemas import ResumePausedInvocationsRequest

    request = ResumePausedInvocationsRequest(service_name=FLAKY, deployment="keep", limit=count)
    async with RestateAdminClient.connect(admin, timeout=30) as client:
        return (await resume.write(client, request, timeout=30, dry_run=False)).result


def timed(label: str, started: float) -> float:
    elapsed = time.perf_counter() - started
    print(f"  {label:44s} {elapsed:8.2f} s")  # noqa: T201 - a benchmark prints its numbers
    return elapsed


async def run(args: argparse.Namespace, admin: str, ingress: str) -> None:
    say = print  # noqa: T201
    prefix = uuid.uuid4().hex[:6]
    failed = f"SELECT count(*) AS n FROM sys_invocation WHERE status = 'completed' AND completion_result = 'failure' AND target_service_name = '{WORKFLOW}'"  # noqa: E501
    say(f"recover {args.keys} terminal-failed keys, concurrency {args.concurrency}, "
        f"{args.rounds} rounds (each: both seeded, then both run, in turns)")  # fmt: skip
    floors: list[float] = []
    ourss: list[float] = []
    for round_ in range(args.rounds):
        floor_keys = [f"f{prefix}{round_}_{n}" for n in range(args.keys)]
        ours_keys = [f"o{prefix}{round_}_{n}" for n in range(args.keys)]
        # The floor's keys fail first; the runbook selects its own by the time in between.
        await submit_many(ingress, floor_keys, "fail", WORKFLOW)
        await wait_for(admin, failed, args.keys)
        await asyncio.sleep(1.1)
        since = datetime.now(UTC).isoformat(timespec="seconds")
        await asyncio.sleep(1.1)
        await submit_many(ingress, ours_keys, "fail", WORKFLOW)
        await wait_for(admin, failed, 2 * args.keys)

        async def floor_turn(keys: list[str] = floor_keys) -> None:
            started = time.perf_counter()
            await floor_recover(admin, keys, args.concurrency)
            floors.append(timed("floor (the admin calls, direct)", started))

        async def ours_turn(since: str = since) -> None:
            started = time.perf_counter()
            result = await ours_recover(admin, args.keys, args.concurrency, since)
            ourss.append(timed("recover-stuck-workflows (write, audited)", started))
            say(f"  recovered {result.recovered}, skipped {result.skipped}, "
                f"failed {result.failed}")  # fmt: skip

        if round_ % 2 == 0:
            await floor_turn()
            await ours_turn()
        else:
            await ours_turn()
            await floor_turn()
        say(f"  round {round_ + 1}: ratio {ourss[-1] / floors[-1]:.2f}x")
    floor, ours = statistics.median(floors), statistics.median(ourss)
    ratios = [o / f for o, f in zip(ourss, floors, strict=True)]
    say(f"medians: floor {floor:.2f} s, runbook {ours:.2f} s; ratio {ours / floor:.2f}x; "
        f"median of the rounds' ratios {statistics.median(ratios):.2f}x")  # fmt: skip

    if args.paused > 0:
        await resume_turn(admin, ingress, prefix, args.paused)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    say(f"peak memory of this process (both runbooks and floors): {peak:.0f} MiB")


async def resume_turn(admin: str, ingress: str, prefix: str, paused: int) -> None:
    """Resume ``paused`` paused invocations: the floor's, then the runbook's."""
    say = print  # noqa: T201
    paused_sql = f"SELECT count(*) AS n FROM sys_invocation WHERE status = 'paused' AND target_service_name = '{FLAKY}'"  # noqa: E501
    floor_ids = await submit_many(ingress, [f"pf{prefix}_{n}" for n in range(paused)], "x",
                                  FLAKY)  # fmt: skip
    await wait_for(admin, paused_sql, paused)
    say(f"resume {paused} paused invocations (on keep)")
    started = time.perf_counter()
    await floor_resume(admin, floor_ids)
    floor = timed("floor (the admin calls, direct)", started)
    await wait_for(admin, paused_sql, paused)  # they pause again (the bug is not fixed)
    started = time.perf_counter()
    resumed = await ours_resume(admin, paused)
    ours = timed("resume-paused-invocations (write)", started)
    say(f"  resumed {len(resumed.resumed)}; ratio {ours / floor:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--paused", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the batch, in turns")
    args = parser.parse_args()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-bulk-", dir=DATA_DIR))
    os.environ["RECOVERY_DATABASE_URL"] = f"sqlite:///{work / 'audit.db'}"

    from tests.support.local_stack import RestateServer, SampleService

    server = RestateServer(work / "restate").start()
    service = SampleService(work).start()
    try:
        server.register(service.url)
        asyncio.run(run(args, server.admin_url, server.ingress_url))
    finally:
        service.stop()
        server.stop()


if __name__ == "__main__":
    main()
