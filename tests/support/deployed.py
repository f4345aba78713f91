"""prefect.yaml deployed to a real Prefect server, run by a real process worker, with the
automations applied and the operator API in front: what the deployment tests and the
time-to-recovery benchmark (tools/bench.py ttr) run against, and the helpers both use."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
)
from prefect.client.schemas.objects import FlowRun

from tests.support.helpers import Receiver
from tests.support.local_stack import PROJECT_DIR, OperatorApi, RestateServer, StackError

BIN = Path(sys.executable).parent


@dataclass
class Deployed:
    restate: RestateServer
    service_url: str
    env: dict[str, str]
    api: OperatorApi
    key: str
    worker: subprocess.Popen[bytes]
    approvals: Receiver  # the approvers' webhook
    prefect_database: str = "sqlite"  # what the Prefect server runs on

    def stop_worker(self) -> None:
        self.stop_process(self.worker)

    @staticmethod
    def stop_process(worker: subprocess.Popen[bytes]) -> None:
        """SIGTERM, then SIGKILL after 15 s: a run paused for approval (a finding of the 5-minute
        schedule can start one at any time) keeps its process, and the worker waits for it."""
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=30)


def run(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        args, env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode != 0:
        raise StackError(f"{args}: {result.stdout[-2000:]} {result.stderr[-3000:]}")
    return result.stdout


@contextmanager
def deployed_stack(home: Path, service_url: str) -> Iterator[Deployed]:
    """Against the Prefect server of ``PREFECT_API_URL``: an own restate-server (so only its
    findings drive the automations) with ``service_url`` registered, prefect.yaml deployed, a
    process worker, the automations applied (with an approvals webhook), and the operator API with
    an automation's key; stopped on exit."""
    restate = RestateServer(home / "restate").start()
    approvals = Receiver().__enter__()
    worker: subprocess.Popen[bytes] | None = None
    api: OperatorApi | None = None
    try:  # whatever fails on the way up, what started is stopped
        restate.register(service_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTATE_")}
        env.update(
            {
                "RESTATE_ADMIN_URL": restate.admin_url,
                "RESTATE_INGRESS_URL": restate.ingress_url,
                "RESTATE_SERVICE_URL": service_url,
                "RESTATE_RECOVERY_CHECKOUT": str(PROJECT_DIR),
                "RECOVERY_DATABASE_URL": f"sqlite:///{home / 'audit.db'}",
                "PREFECT_WORKER_QUERY_SECONDS": "1",
                "PREFECT_WORKER_PREFETCH_SECONDS": "1",
                "RECOVERY_APPROVAL_WEBHOOK_URL": approvals.url,
            }
        )
        prefect = str(BIN / "prefect")
        run([prefect, "work-pool", "create", "restate-recovery", "--type", "process"], env)
        run([prefect, "--no-prompt", "deploy", "--all"], env)
        worker_log = (home / "worker.log").open("ab")
        worker = subprocess.Popen(
            [prefect, "worker", "start", "--pool", "restate-recovery"],
            env=env,
            cwd=PROJECT_DIR,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        run([str(BIN / "restate-recovery"), "automations", "apply"], env)
        api = OperatorApi(env=env, log_path=home / "api.log").start()
        key = api.create_key(actor="alert_bot", role="automation", permissions=["system:operate"])
        asyncio.run(wait_until_automations_are_live())
        deployed = Deployed(restate, service_url, env, api, key, worker, approvals)
        yield deployed
    finally:
        if api is not None:
            api.stop()
        if worker is not None:
            Deployed.stop_process(worker)
        restate.stop()
        approvals.__exit__()


async def wait_until_automations_are_live(timeout: float = 60) -> None:
    """An event sent just after an automation is created may arrive before Prefect's trigger
    service has loaded it. A canary automation, created after the others, is sent events until
    it acts: the trigger service then has every automation created before it."""
    from prefect.automations import Automation
    from prefect.events import Event
    from prefect.events.actions import DoNothing
    from prefect.events.clients import get_events_client
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.settings import PREFECT_API_URL

    canary = await Automation(
        name=f"tests-canary-{uuid.uuid4().hex[:8]}",
        trigger=EventTrigger(
            expect={"restate.tests.canary"}, posture=Posture.Reactive, threshold=1
        ),
        actions=[DoNothing()],
    ).acreate()
    assert canary.id is not None
    acted = {"event": {"name": ["prefect.automation.action.executed"]},
             "resource": {"id": [f"prefect.automation.{canary.id}"]}}  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        async with httpx.AsyncClient(base_url=str(PREFECT_API_URL.value()), timeout=10) as http:
            while True:
                async with get_events_client(checkpoint_every=1) as events:
                    await events.emit(
                        Event(event="restate.tests.canary", resource={"prefect.resource.id": "t"})
                    )
                await asyncio.sleep(1)
                found = await http.post("/events/filter", json={"filter": acted, "limit": 1})
                if found.json()["events"]:
                    return
                assert time.monotonic() < deadline, "the trigger service never loaded automations"
    finally:
        async with get_client() as client:
            await client.delete_automation(canary.id)


async def runs_of(deployment_name: str) -> list[FlowRun]:
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(deployment_name)
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )


async def wait_for_run(
    deployment_name: str, state: str, known: set[Any], timeout: float = 120, match: str = ""
) -> FlowRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for flow_run in await runs_of(deployment_name):
            if (
                flow_run.id not in known
                and match in flow_run.name
                and flow_run.state
                and flow_run.state.type.value == state
            ):
                return flow_run
        await asyncio.sleep(1)
    raise AssertionError(f"no new {state} run of {deployment_name} within {timeout} s")


def alert_body(summary: str) -> dict[str, Any]:
    return {
        "version": "4",
        "status": "firing",
        "receiver": "restate-recovery",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "RestateWorkflowFailures", "severity": "page"},
                "annotations": {"summary": summary},
                "startsAt": f"2026-12-01T10:00:00.{uuid.uuid4().int % 1000:03d}Z",
                "fingerprint": uuid.uuid4().hex[:16],
            }
        ],
    }


def send_alert(deployed: Deployed, body: dict[str, Any]) -> None:
    for _ in range(2):  # Alertmanager re-delivers: one event, one doctor run
        response = httpx.post(
            f"{deployed.api.url}/api/v2/admin/operator/restate/alerts",
            json=body,
            headers={"X-Api-Key": deployed.key},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"acknowledged": True, "events": 1}


async def records_of(flow_run_id: Any) -> list[str]:
    """The artifacts a run left, the newest version first (a record is published again as the
    run goes on)."""
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    artifacts.sort(key=lambda a: a.created or 0, reverse=True)
    return [str(a.data) for a in artifacts]


async def final_state(flow_run_id: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while (state := (await client.read_flow_run(flow_run_id)).state) and not state.is_final():
            assert time.monotonic() < deadline, state
            await asyncio.sleep(1)
    assert state is not None
    return state
