"""Crashes and lost dependencies in the middle of a write, for real: the operator API and Prefect
killed with SIGKILL at a chosen step (a hook in a proxy in front of Restate's admin API), the
audit database's network cut (a TCP proxy in front of the machine's PostgreSQL). After each: no
open row, no Running run, no held lock, and no write reported as failed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import Session

from restate_recovery import store
from restate_recovery.settings import DATA_DIR
from tests.conftest import SESSION_DIR, RestateStack
from tests.support.fault_proxy import Fault, FaultProxy, running
from tests.support.helpers import closed_port_url
from tests.support.local_stack import (
    OperatorApi,
    PrefectServer,
    submit_workflow,
    wait_for_status,
)
from tests.support.tcp_proxy import TcpProxy
from tests.support.tcp_proxy import running as tcp_running

pytestmark = [pytest.mark.restate, pytest.mark.prefect]

PREFIX = "/api/v2/admin/operator/restate"
WORKFLOW = "IdentityRecoveryWorkflow"
CLI = str(Path(sys.executable).parent / "restate-recovery")


def api_env(
    admin_url: str, database_url: str, prefect_api_url: str, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTATE_", "RECOVERY_"))}
    env.update(
        {
            "RESTATE_ADMIN_URL": admin_url,
            "RECOVERY_DATABASE_URL": database_url,
            "PREFECT_API_URL": prefect_api_url,
            "RECOVERY_LOCK_TIMEOUT_SECONDS": "60",
            **extra,
        }
    )
    return env


def failed_key(restate: RestateStack, prefix: str) -> tuple[str, str]:
    key = f"{prefix}_{uuid.uuid4().hex[:8]}"
    invocation_id = submit_workflow(restate.ingress_url, key, "fail")
    wait_for_status(restate.admin_url, invocation_id, "completed")
    return key, invocation_id


def recover(
    api: OperatorApi, api_key: str, key: str, request_id: str, timeout: float = 120
) -> httpx.Response:
    return httpx.post(
        f"{api.url}{PREFIX}/recover-stuck-workflow",
        json={"serviceName": WORKFLOW, "serviceKey": key},
        headers={"X-Api-Key": api_key, "X-Request-Id": request_id},
        timeout=timeout,
    )


def rows(database_url: str) -> list[store.OperationAudit]:
    with Session(store.engine_for(database_url)) as session:
        return store.list_attempts(session=session, limit=500)


def row_for(database_url: str, request_id: str) -> store.OperationAudit:
    (found,) = [r for r in rows(database_url) if r.request_id == request_id]
    return found


def eventually(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.25)
    return value


def runs_of_attempt(prefect_api_url: str, attempt_id: int, database: str) -> list[dict[str, Any]]:
    """The Prefect runs of one attempt of ``database`` (other audit databases of the session have
    rows with the same numbers: their runs carry another ``audit-db`` tag)."""
    tags = [f"audit:{attempt_id}", f"audit-db:{store.database_id(database)}"]
    response = httpx.post(
        f"{prefect_api_url}/flow_runs/filter",
        json={"flow_runs": {"tags": {"all_": tags}}},
        timeout=10,
    )
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()
    return found


def invocation_ids(restate: RestateStack, key: str) -> list[str]:
    response = httpx.post(
        f"{restate.admin_url}/query",
        json={"query": f"SELECT id FROM sys_invocation WHERE target_service_key = '{key}'"},
        headers={"accept": "application/json"},
        timeout=10,
    )
    return [r["id"] for r in response.json()["rows"]]


def test_the_api_killed_mid_recovery_leaves_nothing_behind_and_the_rerun_acts_at_once(
    prefect_server: PrefectServer, restate: RestateStack
) -> None:
    home = SESSION_DIR / "crash-api"
    home.mkdir(exist_ok=True)
    database = f"sqlite:///{home / 'audit.db'}"
    key, invocation_id = failed_key(restate, "api_killed")
    apis: list[OperatorApi] = []
    proxy = FaultProxy(
        restate.admin_url,
        rules={
            ("PATCH", f"/invocations/{invocation_id}/purge"): Fault(
                hook=lambda: apis[0].kill(), times=1
            )
        },
    )
    with running(proxy):
        env = api_env(proxy.url, database, prefect_server.api_url)
        apis.append(OperatorApi(env=env, log_path=home / "api-1.log").start())
        api_key = apis[0].create_key(actor="ops_1", role="ops", permissions=["system:operate"])
        with pytest.raises(httpx.TransportError):  # the API dies under the call
            recover(apis[0], api_key, key, "killed-1")
        (crashed,) = [r for r in rows(database) if r.request_id == "killed-1"]
        assert crashed.finished_at is None  # what the crash left: an open row ...
        assert crashed.id is not None
        crashed_id = crashed.id
        with Session(store.engine_for(database)) as session:
            assert [lock.attempt_id for lock in store.locks(session=session)] == [crashed.id]

        apis.append(OperatorApi(env=env, log_path=home / "api-2.log").start())
        try:
            closed = eventually(
                "the row closed", lambda: row_for(database, "killed-1").finished_at is not None
            )
            assert closed
            abandoned = row_for(database, "killed-1")
            assert (abandoned.outcome, abandoned.error["code"]) == (  # type: ignore[index]
                "abandoned",
                store.ABANDONED,
            )
            eventually(
                "its run marked Crashed",
                lambda: (
                    [
                        r["state_type"]
                        for r in runs_of_attempt(prefect_server.api_url, crashed_id, database)
                    ]
                    == ["CRASHED"]
                ),
            )
            rerun = recover(apis[1], api_key, key, "rerun-1", timeout=45)  # under the lock timeout
        finally:
            apis[1].stop()

    assert rerun.status_code == 200 and rerun.json() == {"acknowledged": True}, rerun.text
    assert row_for(database, "rerun-1").outcome == "success"
    assert invocation_ids(restate, key) == []
    with Session(store.engine_for(database)) as session:
        assert store.locks(session=session) == []


def test_prefect_killed_mid_write_the_write_is_answered_as_done_and_its_run_ends_later(
    restate: RestateStack, tmp_path: Path
) -> None:
    prefect = PrefectServer(home=tmp_path / "prefect", template_cache=DATA_DIR / "prefect-template")
    prefect.start()
    database = f"sqlite:///{tmp_path / 'audit.db'}"
    key, invocation_id = failed_key(restate, "prefect_killed")
    proxy = FaultProxy(
        restate.admin_url,
        rules={("PATCH", f"/invocations/{invocation_id}/purge"): Fault(hook=prefect.kill, times=1)},
    )
    with running(proxy):
        env = api_env(proxy.url, database, prefect.api_url)
        api = OperatorApi(env=env, log_path=tmp_path / "api.log").start()
        try:
            api_key = api.create_key(actor="ops_2", role="ops", permissions=["system:operate"])
            answer = recover(api, api_key, key, "prefect-killed")
            row = row_for(database, "prefect-killed")
            prefect.start()  # Prefect comes back (same database)
            assert row.id is not None
            # Its end is recorded late by the run itself (it goes on recording in the API once
            # its caller was answered) or, should the sweep come first, it is marked Crashed:
            # either way it is not left Running.
            (ended,) = eventually(
                "the unfinished run ended",
                lambda: [
                    r["state_type"]
                    for r in runs_of_attempt(prefect.api_url, row.id, database)  # type: ignore[arg-type]
                    if r["state_type"] in ("COMPLETED", "CRASHED")
                ],
            )
        finally:
            api.stop()
            prefect.stop()

    assert answer.status_code == 200 and answer.json() == {"acknowledged": True}, answer.text
    assert (row.outcome, row.error, row.finished_at is not None) == ("success", None, True)
    assert invocation_ids(restate, key) == []  # the write was made


@pytest.fixture
def postgres_schema(postgres_url: str) -> Iterator[tuple[str, str]]:
    """(the URL of a schema of this test's own, that schema's name)."""
    name = f"rr_crash_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(
        store.normalize_url(postgres_url.split("?")[0]), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    yield postgres_url.split("?")[0], name
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
    admin.dispose()


def test_the_audit_database_lost_mid_write_the_answer_says_done_and_the_row_follows(
    prefect_server: PrefectServer,
    restate: RestateStack,
    postgres_schema: tuple[str, str],
    tmp_path: Path,
) -> None:
    base, schema = postgres_schema
    network = TcpProxy("127.0.0.1", 5432)
    via_proxy = base.replace("127.0.0.1:5432", f"127.0.0.1:{network.port}")
    database = f"{via_proxy}?options=-csearch_path%3D{schema}"
    direct = f"{base}?options=-csearch_path%3D{schema}"
    key, invocation_id = failed_key(restate, "db_lost")
    proxy = FaultProxy(
        restate.admin_url,
        rules={("PATCH", f"/invocations/{invocation_id}/purge"): Fault(hook=network.cut, times=1)},
    )
    with tcp_running(network), running(proxy):
        env = api_env(proxy.url, database, prefect_server.api_url)
        api = OperatorApi(env=env, log_path=tmp_path / "api.log").start()
        try:
            api_key = api.create_key(actor="ops_3", role="ops", permissions=["system:operate"])
            answer = recover(api, api_key, key, "db-lost")
            meanwhile = httpx.post(
                f"{api.url}{PREFIX}/doctor", json={}, headers={"X-Api-Key": api_key}, timeout=60
            )
            open_while_away = row_for(direct, "db-lost").finished_at is None
            network.restore()
            eventually("the row finished", lambda: row_for(direct, "db-lost").finished_at)
        finally:
            api.stop()

    assert answer.status_code == 200 and answer.json() == {"acknowledged": True}, answer.text
    assert invocation_ids(restate, key) == []
    assert open_while_away
    assert meanwhile.status_code == 503
    assert (
        meanwhile.json()["code"] == "AUDIT_DATABASE_UNAVAILABLE" and meanwhile.json()["requestId"]
    )
    assert row_for(direct, "db-lost").outcome == "success"


def test_a_busy_prefect_delays_a_write_and_never_fails_it(
    prefect_server: PrefectServer, restate: RestateStack, tmp_path: Path
) -> None:
    """Prefect's SQLite under load answers 503 ("Service Unavailable", a locked database) for a
    while: that is a busy Prefect, not a lost one, and the runbook waits it out (Prefect's own
    client retries). Three such answers in a row to the run's creation outlast a budget of two
    retries (the one this tool had set)."""
    database = f"sqlite:///{tmp_path / 'audit.db'}"
    key, _ = failed_key(restate, "prefect_busy")
    busy = Fault(
        status=503, body=b'{"exception_message": "Service Unavailable"}', times=3, exact=True
    )
    proxy = FaultProxy(
        prefect_server.api_url.removesuffix("/api"), rules={("POST", "/api/flow_runs/"): busy}
    )
    with running(proxy):
        env = api_env(restate.admin_url, database, f"{proxy.url}/api")
        api = OperatorApi(env=env, log_path=tmp_path / "api.log").start()
        try:
            api_key = api.create_key(actor="ops_5", role="ops", permissions=["system:operate"])
            answer = recover(api, api_key, key, "prefect-busy")
        finally:
            api.stop()

    assert busy.times == 0  # all three 503s were answered
    assert answer.status_code == 200 and answer.json() == {"acknowledged": True}, answer.text
    assert invocation_ids(restate, key) == []
    row = row_for(database, "prefect-busy")
    assert (row.outcome, row.flow_run_id is not None) == ("success", True)


def test_a_prefect_that_is_down_is_a_503_naming_it_and_nothing_is_written(
    restate: RestateStack, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'audit.db'}"
    key, invocation_id = failed_key(restate, "no_prefect")
    env = api_env(restate.admin_url, database, f"{closed_port_url()}/api")
    api = OperatorApi(env=env, log_path=tmp_path / "api.log").start()
    try:
        api_key = api.create_key(actor="ops_4", role="ops", permissions=["system:operate"])
        answer = recover(api, api_key, key, "no-prefect")
    finally:
        api.stop()

    assert answer.status_code == 503, answer.text
    assert answer.json()["code"] == "PREFECT_UNAVAILABLE"
    assert answer.json()["requestId"] == "no-prefect"
    row = row_for(database, "no-prefect")
    assert (row.outcome, row.error["code"]) == ("failure", "PREFECT_UNAVAILABLE")  # type: ignore[index]
    assert invocation_ids(restate, key) == [invocation_id]  # untouched


@pytest.mark.parametrize("down", ["prefect", "audit database"])
def test_the_cli_prints_the_error_body_when_a_dependency_is_down(
    restate: RestateStack, tmp_path: Path, down: str
) -> None:
    key, _ = failed_key(restate, "cli_down")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RESTATE_", "RECOVERY_", "DALP_"))
    }
    env["RESTATE_ADMIN_URL"] = restate.admin_url
    if down == "prefect":
        env.update(
            PREFECT_API_URL=f"{closed_port_url()}/api",
            RECOVERY_DATABASE_URL=f"sqlite:///{tmp_path / 'a.db'}",
        )
    else:
        env["RECOVERY_DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/none"
    result = subprocess.run(
        [CLI, "recover-stuck-workflow", "--service-name", WORKFLOW, "--service-key", key, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )

    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    expected = "PREFECT_UNAVAILABLE" if down == "prefect" else "AUDIT_DATABASE_UNAVAILABLE"
    assert json_body(result.stdout)["code"] == expected


def json_body(text: str) -> dict[str, Any]:
    import json

    body: dict[str, Any] = json.loads(text)
    return body
