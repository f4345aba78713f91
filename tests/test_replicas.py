"""Replicas on Prefect on PostgreSQL: one Prefect server whose database is a PostgreSQL database of
the tests' own (migrated by Prefect at its start), one audit database (a PostgreSQL schema of its
own), two operator API processes and two process workers. Concurrent recoveries of one key
through both APIs act once; two approval-gated runs of one target, one on each worker,
leave one plan pending; every attempt has one finished audit row."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import Session

from restate_recovery import errors, store
from restate_recovery.runbooks import RECOVER_STUCK_WORKFLOW
from tests.conftest import POSTGRES_URL, RestateStack, postgres_admin
from tests.support.deployed import run as run_cli
from tests.support.helpers import query
from tests.support.local_stack import (
    PROJECT_DIR,
    WORKFLOW,
    OperatorApi,
    PrefectServer,
    submit_workflow,
    wait_for_status,
)

pytestmark = [pytest.mark.restate, pytest.mark.prefect]

BIN = Path(sys.executable).parent
PREFIX = "/api/v2/admin/operator/restate"
DOCUMENTED = {
    v for k, v in vars(errors).items() if k.isupper() and isinstance(v, str) and v.isupper()
}


@pytest.fixture(scope="module")
def audit_on_postgres() -> Iterator[str]:
    schema = f"rr_replicas_{uuid.uuid4().hex[:10]}"
    engine = postgres_admin()
    with engine.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in (POSTGRES_URL or "") else "?"
    yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    with engine.connect() as connection:
        connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@dataclass
class Replicas:
    apis: list[OperatorApi]
    key: str
    env: dict[str, str]
    prefect: str  # its API URL
    worker_logs: list[Path]  # of w1 and w2, each running at most one flow run at a time

    def worker_of(self, flow_run_id: str) -> list[str]:
        """The workers whose log says they submitted the run, and not that Prefect aborted the
        submission (both may try to take one run: Prefect lets one move it to Pending)."""
        submitted = f"submitting flow run '{flow_run_id}'"
        aborted = f"Aborted submission of flow run '{flow_run_id}'"
        return [
            log.stem
            for log in self.worker_logs
            if submitted in (text := log.read_text(errors="replace")) and aborted not in text
        ]


@pytest.fixture(scope="module")
def replicas(
    prefect_on_postgres: PrefectServer,
    audit_on_postgres: str,
    restate: RestateStack,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Replicas]:
    home = tmp_path_factory.mktemp("replicas")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTATE_", "RECOVERY_"))}
    env.update(
        RESTATE_ADMIN_URL=restate.admin_url,
        RESTATE_INGRESS_URL=restate.ingress_url,
        RESTATE_SERVICE_URL=restate.service_url,
        RESTATE_RECOVERY_CHECKOUT=str(PROJECT_DIR),
        PREFECT_API_URL=prefect_on_postgres.api_url,
        RECOVERY_DATABASE_URL=audit_on_postgres,
        RECOVERY_APPROVAL_TIMEOUT_SECONDS="20",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="1",
    )
    apis = [OperatorApi(env=env, log_path=home / f"api-{n}.log").start() for n in (1, 2)]
    workers: list[subprocess.Popen[bytes]] = []
    try:
        key = apis[0].create_key(actor="replica_ops", role="ops", permissions=["system:operate"])
        prefect = str(BIN / "prefect")
        run_cli([prefect, "work-pool", "create", "restate-recovery", "--type", "process"], env)
        run_cli([prefect, "--no-prompt", "deploy", "--all"], env)
        for n in (1, 2):
            log = (home / f"worker-{n}.log").open("ab")
            workers.append(subprocess.Popen(
                [prefect, "worker", "start", "--pool", "restate-recovery", "--name", f"w{n}",
                 "--limit", "1"],
                env=env, cwd=PROJECT_DIR, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            ))  # fmt: skip
        logs = [home / f"worker-{n}.log" for n in (1, 2)]
        yield Replicas(apis, key, env, prefect_on_postgres.api_url, logs)
    finally:
        for worker in workers:
            os.killpg(worker.pid, 15)
            worker.wait(timeout=30)
        for api in apis:
            api.stop()


def rows_for(replicas: Replicas, request_ids: set[str]) -> list[store.OperationAudit]:
    with Session(store.engine_for(replicas.env["RECOVERY_DATABASE_URL"])) as session:
        rows = store.list_attempts(session=session, limit=10_000)
    return [r for r in rows if r.request_id in request_ids]


def record_of(replicas: Replicas, flow_run_id: str) -> str:
    """The newest incident record (markdown artifact) of a flow run."""
    response = httpx.post(
        f"{replicas.prefect}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "CREATED_DESC"},
        timeout=10,
    )
    response.raise_for_status()
    found = [a for a in response.json() if a.get("type") == "markdown"]
    return str(found[0]["data"]) if found else ""


def invocations_of(restate: RestateStack, key: str) -> list[dict[str, Any]]:
    return query(
        restate.admin_url,
        f"SELECT id FROM sys_invocation WHERE target_service_name = '{WORKFLOW}' "
        f"AND target_service_key = '{key}'",
    )


def test_concurrent_recoveries_of_one_key_through_two_apis_act_once(
    replicas: Replicas, restate: RestateStack
) -> None:
    for round_ in range(3):
        one_round(replicas, restate, round_)


def one_round(replicas: Replicas, restate: RestateStack, round_: int) -> None:
    """One key, posted to both APIs at once."""
    key = f"replica_{round_}_{uuid.uuid4().hex[:8]}"
    failed = submit_workflow(restate.ingress_url, key, "fail")
    wait_for_status(restate.admin_url, failed, "completed")
    answers: dict[str, httpx.Response] = {}
    start = threading.Barrier(2)

    def recover(api: OperatorApi, request_id: str) -> None:
        start.wait()
        answers[request_id] = httpx.post(
            f"{api.url}{PREFIX}/recover-stuck-workflow",
            json={"serviceName": WORKFLOW, "serviceKey": key},
            headers={"X-Api-Key": replicas.key, "X-Request-Id": request_id},
            timeout=180,
        )

    ids = [f"rep-{round_}-{n}-{uuid.uuid4().hex[:6]}" for n in (1, 2)]
    threads = [threading.Thread(target=recover, args=(api, i))
               for api, i in zip(replicas.apis, ids, strict=True)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=200)
    # The second waits for the first's lock, then plans anew from Restate's view: nothing is
    # left to do, so it writes nothing and answers as the first did (the key is recovered), or
    # a documented refusal if it plans while the first is midway.
    for request_id, answer in answers.items():
        assert answer.status_code in (200, 404, 409), (request_id, answer.text)
        if answer.status_code != 200:
            assert answer.json()["code"] in DOCUMENTED, answer.json()
    assert any(a.status_code == 200 for a in answers.values())
    assert invocations_of(restate, key) == []  # the run was purged

    deadline = time.monotonic() + 30
    while len(rows := rows_for(replicas, set(ids))) < 2 or any(r.finished_at is None for r in rows):
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
    # exactly one acted: one incident record lists the purge among its steps done
    records = [record_of(replicas, r.flow_run_id) for r in rows if r.flow_run_id]
    acted = [r for r in records if "## Steps done" in r and f"**purge** `{failed}`" in r]
    assert len(acted) == 1, records
    assert sorted(r.request_id or "" for r in rows) == sorted(ids)  # one row per attempt
    assert {r.outcome for r in rows} <= {"success", "failure"}


def test_two_approval_gated_runs_of_one_target_on_two_workers_leave_one_plan_pending(
    replicas: Replicas, restate: RestateStack
) -> None:
    key = f"replica_plan_{uuid.uuid4().hex[:8]}"
    failed = submit_workflow(restate.ingress_url, key, "fail")
    wait_for_status(restate.admin_url, failed, "completed")
    prefect = replicas.prefect
    deployment = httpx.get(
        f"{prefect}/deployments/name/{RECOVER_STUCK_WORKFLOW.deployment_name}", timeout=10
    ).json()
    parameters = {
        "request": {"serviceName": WORKFLOW, "serviceKey": key},
        "operator": "replica_ops",
        "reason": "replica test",
        "dry_run": False,
        "require_approval": True,
    }
    created = [
        httpx.post(f"{prefect}/deployments/{deployment['id']}/create_flow_run",
                   json={"parameters": parameters}, timeout=10).json()["id"]
        for _ in range(2)
    ]  # fmt: skip

    def state_of(run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = httpx.get(f"{prefect}/flow_runs/{run_id}", timeout=10).json()
        return run

    deadline = time.monotonic() + 180
    seen: dict[str, set[str]] = {i: set() for i in created}
    finals = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
    while not all(state_of(i)["state_type"] in finals for i in created):
        for run_id in created:
            seen[run_id].add(state_of(run_id)["state_type"])
        assert time.monotonic() < deadline, {i: state_of(i)["state"] for i in created}
        time.sleep(0.5)
    runs = [state_of(i) for i in created]
    # each worker takes one run at a time, and the paused one holds its worker: one run each
    assert sorted(w for i in created for w in replicas.worker_of(i)) == ["worker-1", "worker-2"]
    paused = [r for r in runs if "PAUSED" in seen[r["id"]]]
    assert len(paused) == 1, [(r["state_type"], r["state"]["message"]) for r in runs]
    (refused,) = [r for r in runs if r["id"] != paused[0]["id"]]
    assert "Not planned again" in (refused["state"]["message"] or ""), refused["state"]
    # the plan nobody approved ended at its approval timeout (20 s): nothing was written
    assert [r["id"] for r in invocations_of(restate, key)] == [failed]
    with Session(store.engine_for(replicas.env["RECOVERY_DATABASE_URL"])) as session:
        rows = [r for r in store.list_attempts(session=session, limit=10_000)
                if r.flow_run_id in set(created)]  # fmt: skip
    assert sorted(r.flow_run_id or "" for r in rows) == sorted(created)  # one row per run
    assert all(r.finished_at is not None and r.outcome == "failure" for r in rows)
