"""Benchmark: the doctor on a real 3-node Restate cluster beside the raw probes there, in one run.

    .venv/bin/python -m tools.bench_cluster [--sizes 1000,10000] [--turns 11]

Starts a 3-node restate-server cluster (tests/support/cluster.py), the sample service, a Prefect
server and the operator API configured for the cluster (its three admin URLs, its three node URLs:
the readout has its ``cluster`` part); seeds invocations as tools.bench does; then measures, in
turns after the same pause, the raw probes (plain HTTP on fresh connections to node 1, and the
cluster readout's own reads: four ``restatectl sql --json`` and two ``partitions ... show``, at
once), the doctor as a library call, and the HTTP route until answered. Prints medians and
minimums (ms) and the ratio of the route to the slowest raw probe; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from tools.bench import PREFIX, QUIET_SECONDS, in_turns, ms, raw_probes, seed, settle


async def raw_cluster_reads(binary: str, node_url: str) -> None:
    from restate_recovery.doctor.cluster import read_tables

    await read_tables(binary, node_url)


async def run(args: argparse.Namespace, work: Path) -> None:
    from restate_recovery.doctor.cluster import restatectl_path
    from restate_recovery.doctor.probes import resolve_endpoints, run_doctor
    from restate_recovery.settings import DATA_DIR, get_settings
    from tests.support.cluster import RestateCluster
    from tests.support.local_stack import OperatorApi, PrefectServer, SampleService

    cluster = RestateCluster(work / "cluster").start()
    service = SampleService(work).start()
    prefect = PrefectServer(home=work / "prefect", template_cache=DATA_DIR / "prefect-template")
    os.environ["PREFECT_API_URL"] = prefect.api_url
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTATE_", "RECOVERY_"))}
    env.update(
        {
            "RESTATE_ADMIN_URL": ",".join(cluster.admin_urls),
            "RESTATE_INGRESS_URL": cluster.ingress_urls[0],
            "RESTATE_NODE_URLS": ",".join(cluster.node_urls),
            "RESTATE_SERVICE_URL": service.url,
            "PREFECT_API_URL": prefect.api_url,
            "RECOVERY_DATABASE_URL": f"sqlite:///{work / 'audit.db'}",
        }
    )
    os.environ.update(env)
    get_settings.cache_clear()
    api = OperatorApi(env=env, log_path=work / "api.log")
    try:
        prefect.start()
        cluster.register(service.url)
        api.start()
        key = api.create_key(actor="bench", role="ops", permissions=["system:operate"])
        binary = restatectl_path(None)
        assert binary is not None, "restatectl is not installed: run ./scripts/bootstrap"
        admin, ingress, node = cluster.admin_urls[0], cluster.ingress_urls[0], cluster.node_urls[0]
        endpoints = resolve_endpoints(get_settings())
        print(f"machine: {os.cpu_count()} cores; 3-node cluster; {args.turns} rounds in turns")  # noqa: T201
        seeded = 0
        fresh = httpx.AsyncClient(timeout=60, headers={"connection": "close"})
        async with fresh, httpx.AsyncClient(timeout=120) as http:

            async def route() -> float:
                started = time.perf_counter()
                response = await http.post(
                    f"{api.url}{PREFIX}/doctor",
                    json={},
                    headers={"X-Api-Key": key, "X-Request-Id": f"bench-{uuid.uuid4().hex[:8]}"},
                )
                answered = time.perf_counter() - started
                response.raise_for_status()
                assert response.json()["cluster"]["status"] == "ok", response.json()["cluster"]
                await asyncio.sleep(QUIET_SECONDS)  # its record is made meanwhile: not timed
                return answered

            for size in [int(s) for s in args.sizes.split(",")]:
                started = time.perf_counter()
                await seed(ingress, size - seeded, start=seeded)
                await settle(admin)
                seeded = size
                turns = {
                    **{f"raw {k}": v for k, v in raw_probes(fresh, admin, ingress).items()},
                    "raw cluster tables (restatectl, 6 calls at once)": lambda: raw_cluster_reads(
                        binary, node
                    ),
                    "doctor: library call (with the cluster part)": lambda: run_doctor(endpoints),
                    "doctor: HTTP route, answered": route,
                }
                samples = await in_turns(turns, args.turns)
                print(  # noqa: T201
                    f"\n== {size} invocations (seeded in {time.perf_counter() - started:.0f} s); "
                    "ms: median, min"
                )
                for label, row in samples.items():
                    print(f"{label:52s} {ms(row)}")  # noqa: T201
                floor = max(
                    statistics.median(v)
                    for k, v in samples.items()
                    if k.startswith("raw ") and not k.startswith("raw  ")
                )
                answered = statistics.median(samples["doctor: HTTP route, answered"])
                print(  # noqa: T201
                    f"{'slowest raw probe (median)':52s} {floor * 1000:9.1f}\n"
                    f"{'HTTP doctor answered / slowest raw probe':52s} {answered / floor:9.2f}x"
                )
    finally:
        api.stop()
        prefect.stop()
        service.stop()
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000", help="invocation counts, comma-separated")
    parser.add_argument("--turns", type=int, default=11, help="rounds measured in turns")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        asyncio.run(run(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
