"""Screenshots of what an operator sees in the Prefect UI for an approval-gated recovery.

    (cd tools/screenshots && npm ci)      once; needs Debian's chromium (/usr/bin/chromium)
    .venv/bin/python -m tools.ui_tour

Starts a throw-away stack on loopback (restate-server, the sample service, a Prefect server WITH
its UI, prefect.yaml deployed, a process worker), makes one workflow key fail terminally and runs
the doctor; then tools/screenshots/shoot.mjs drives Chromium through the UI (V2, the default):
the recover deployment's Custom run form, filled in and submitted to write with approval; the
paused run, its plan record, and the page the plan announcement's link opens; the Resume form
submitted without a decision (it must be refused, the run still paused), then with "approve"
chosen (the approval); the finished record; the doctor's readout. The PNGs land in docs/images/;
everything stops at the end (the logs stay in .data/ if something failed). docs/ui.md shows them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from restate_recovery.settings import DATA_DIR
from tests.support.local_stack import (
    PROJECT_DIR,
    WORKFLOW,
    RestateServer,
    SampleService,
    _spawn,
    _terminate,
    free_port,
    prefect_env,
    prefect_template_database,
    submit_workflow,
    wait_for_status,
)

BIN = Path(sys.executable).parent
SHOOT = PROJECT_DIR / "tools" / "screenshots" / "shoot.mjs"
IMAGES = PROJECT_DIR / "docs" / "images"
say = Console(highlight=False).print


@dataclass
class Stack:
    ui_url: str  # the Prefect UI, e.g. http://127.0.0.1:PORT
    restate: RestateServer
    env: dict[str, str]  # what the worker and the CLI run with


def run(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        args, env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{args}: {result.stdout[-2000:]} {result.stderr[-2000:]}")


@contextmanager
def stack(work: Path) -> Iterator[Stack]:
    """restate-server + sample service, a Prefect server with its UI, prefect.yaml deployed, one
    process worker: all on free loopback ports, data under ``work``; stopped on exit."""
    restate = RestateServer(work / "restate").start()
    service = SampleService(work).start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        restate.register(service.url)
        port = free_port()
        ui_url = f"http://127.0.0.1:{port}"
        home = work / "prefect"
        home.mkdir()
        database = home / "prefect.db"
        shutil.copyfile(prefect_template_database(DATA_DIR / "prefect-template"), database)
        env = prefect_env(home, database)
        env.update(
            {
                "PREFECT_SERVER_API_HOST": "127.0.0.1",
                "PREFECT_SERVER_API_PORT": str(port),
                "PREFECT_API_URL": f"{ui_url}/api",
                "PREFECT_SERVER_UI_ENABLED": "true",
                "PREFECT_UI_API_URL": f"{ui_url}/api",
                "PREFECT_UI_URL": ui_url,
                # the server copies the bundled UI before serving it: here, not into the venv
                "PREFECT_UI_STATIC_DIRECTORY": str(work / "ui-static"),
            }
        )
        processes.append(
            _spawn(
                "prefect server (with UI)",
                [str(BIN / "prefect"), "server", "start"],
                env=env,
                log_path=home / "prefect-server.log",
                probe=lambda: httpx.get(f"{ui_url}/api/health", timeout=2).status_code == 200,
                timeout_s=120,
            )
        )
        env = {k: v for k, v in env.items() if not k.startswith(("RESTATE_", "RECOVERY_"))}
        env.update(
            {
                "RESTATE_ADMIN_URL": restate.admin_url,
                "RESTATE_INGRESS_URL": restate.ingress_url,
                "RESTATE_SERVICE_URL": service.url,
                "RESTATE_RECOVERY_CHECKOUT": str(PROJECT_DIR),
                "RECOVERY_DATABASE_URL": f"sqlite:///{work / 'audit.db'}",
                "PREFECT_WORKER_QUERY_SECONDS": "1",
                "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            }
        )
        prefect = str(BIN / "prefect")
        run([prefect, "work-pool", "create", "restate-recovery", "--type", "process"], env)
        run([prefect, "--no-prompt", "deploy", "--all"], env)
        processes.append(
            _spawn(
                "prefect worker",
                [prefect, "worker", "start", "--pool", "restate-recovery"],
                env=env,
                log_path=work / "worker.log",
                probe=lambda: "started" in (work / "worker.log").read_text(errors="replace"),
                timeout_s=60,
            )
        )
        yield Stack(ui_url, restate, env)
    finally:
        for process in reversed(processes):
            _terminate(process, grace=15)
        service.stop()
        restate.stop()


def shoot(command: str, url: str, png: str, *args: str) -> Path:
    """One shoot.mjs command (a fresh headless Chromium each time); what it prints is shown."""
    out = IMAGES / png
    result = subprocess.run(
        ["node", str(SHOOT), command, url, str(out), *args],
        cwd=SHOOT.parent,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        timeout=180,
    )
    say(f"  {out.relative_to(PROJECT_DIR)}")
    for line in result.stdout.splitlines():
        say(f"    {line}", markup=False)
    return out


class Api:
    """The few Prefect REST calls the tour needs."""

    def __init__(self, ui_url: str) -> None:
        self.http = httpx.Client(base_url=f"{ui_url}/api", timeout=30)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    def deployment_id(self, name: str) -> str:
        return str(self.call("GET", f"/deployments/name/{name}")["id"])

    def run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"/flow_runs/{run_id}")
        return result

    def newest_artifact(self, run_id: str) -> str:
        body = {"artifacts": {"flow_run_id": {"any_": [run_id]}}, "sort": "CREATED_DESC"}
        return str(self.call("POST", "/artifacts/filter", {**body, "limit": 1})[0]["id"])

    def run_named(self, deployment_id: str, contains: str) -> dict[str, Any] | None:
        runs = self.call(
            "POST",
            "/flow_runs/filter",
            {
                "deployments": {"id": {"any_": [deployment_id]}},
                "flow_runs": {"name": {"like_": contains}},
            },
        )
        return runs[0] if runs else None

    def approval_link(self, run_id: str) -> str | None:
        """The link the plan's announcement (the approvers' notification) carries."""
        events = self.call(
            "POST",
            "/events/filter",
            {"filter": {"event": {"name": ["restate.plan.awaiting-approval"]}}, "limit": 50},
        )["events"]
        links = [str(e["payload"]["runUrl"]) for e in events]
        return next((link for link in links if run_id in link), None)


def until(what: str, check: Callable[[], Any], timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(1)
    return found


def state_of(api: Api, run_id: str, *types: str) -> dict[str, Any] | None:
    run = api.run(run_id)
    return run if run["state"] and run["state"]["type"] in types else None


def tour(stack: Stack) -> list[Path]:
    ui, api = f"{stack.ui_url}/v2", Api(stack.ui_url)

    def record(run_id: str) -> str:  # the run's incident record (or readout), newest version
        return f"{ui}/artifacts/artifact/{api.newest_artifact(run_id)}"

    def ended(run_id: str) -> dict[str, Any]:
        final = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
        run: dict[str, Any] = until("the run to end", lambda: state_of(api, run_id, *final))
        say(f"  run {run['name']} ended {run['state']['name']}: {run['state']['message']}")
        return run

    key = f"invitation_{uuid.uuid4().hex[:8]}"
    say(f"{WORKFLOW}/{key} fails terminally; the doctor runs")
    invocation = submit_workflow(stack.restate.ingress_url, key, "fail")
    wait_for_status(stack.restate.admin_url, invocation, "completed")
    doctor_id = api.deployment_id("restate-doctor/doctor")
    doctor = ended(api.call("POST", f"/deployments/{doctor_id}/create_flow_run", {})["id"])
    pngs = [shoot("page", record(doctor["id"]), "doctor-artifact.png", "Needs attention")]

    say("the recover deployment's Custom run form, submitted to write with approval")
    recover_id = api.deployment_id("recover-stuck-workflow/recover")
    who = ["erin", "INC-1234: invitation failed at the provider; retry from scratch"]
    form = f"{ui}/deployments/deployment/{recover_id}"
    pngs.append(shoot("form", form, "recover-form.png", WORKFLOW, key, *who))
    run = until("the run to appear", lambda: api.run_named(recover_id, key))  # named once begun
    until("the run to pause", lambda: state_of(api, run["id"], "PAUSED"))
    run_page = f"{ui}/runs/flow-run/{run['id']}"
    pngs.append(shoot("page", f"{run_page}?tab=Logs", "paused-run.png", "Pausing flow"))
    pngs.append(shoot("page", record(run["id"]), "paused-plan.png", "Plan (nothing done yet)"))
    link = until("the plan's announcement", lambda: api.approval_link(run["id"]))
    say(f"  the announcement's link: {link}")
    pngs.append(shoot("page", link, "approval-link.png", "Paused"))  # where its link leads

    approval = ["alice", "INC-1234: plan checked, the key may run again"]
    say("the Resume form, submitted with no decision chosen: refused")
    pngs.append(shoot("refused", run_page, "resume-refused.png", *approval))
    time.sleep(3)  # the run would have left Paused by now had it been resumed
    if not state_of(api, run["id"], "PAUSED"):
        raise RuntimeError(f"resumed without a decision: {api.run(run['id'])['state']}")
    say("  the run is still paused")

    say("approved in the Resume form")
    pngs.append(shoot("resume", run_page, "resume-form.png", *approval))
    ended(run["id"])
    pngs.append(shoot("page", record(run["id"]), "finished-record.png", "Steps done"))
    return pngs


def main() -> int:
    if not (SHOOT.parent / "node_modules" / "playwright-core").is_dir():
        say("[red]first: cd tools/screenshots && npm ci[/]")
        return 2
    IMAGES.mkdir(parents=True, exist_ok=True)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ui-tour-", dir=DATA_DIR))
    started = time.monotonic()
    try:
        say(f"starting the stack (data and logs in {work})")
        with stack(work) as running:
            say(f"Prefect UI at {running.ui_url}")
            pngs = tour(running)
    except Exception:
        say(f"[red]failed: the logs stay in {work}[/]")
        raise
    shutil.rmtree(work, ignore_errors=True)
    say(f"{len(pngs)} screenshots in {time.monotonic() - started:.0f} s; everything stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
