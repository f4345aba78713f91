"""Screenshots of what an operator sees in the Prefect UI for an approval-gated recovery.

    (cd tools/screenshots && npm ci)      once; needs Debian's chromium (/usr/bin/chromium)
    .venv/bin/python -m tools.ui_tour

Starts a throw-away stack on loopback (restate-server, the sample service, a Prefect server WITH
its UI, prefect.yaml deployed, a process worker), makes one workflow key fail terminally and runs
the doctor; then tools/screenshots/shoot.mjs drives Chromium through the UI (V2, the default):
the recover deployment's Custom run form, filled in and submitted to write with approval; the
paused run, its plan record, and the page the plan announcement's link opens; the Resume form
submitted without a decision (it must be refused, the run still paused), then with "approve"
chosen (the approval); the finished record; the doctor's readout. Then the two newer deployments'
Custom run forms, each as it opens and filled in for a dry run (recover-many over three keys an
"outage" failed, resume over two paused FlakyWorkflow runs), submitted: the run the UI created must
have exactly the form's parameters and complete, its record must plan exactly those keys (runs),
and Restate must show them untouched; then the record. The PNGs land in docs/images/;
everything stops at the end (the logs stay in .data/ if something failed). docs/ui.md shows them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from restate_recovery.settings import DATA_DIR
from restate_recovery.sql import invocation_id_literal, name_literal
from tests.support.helpers import query
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
FLAKY = "FlakyWorkflow"  # the sample service's workflow whose runs pause (sample_service.py)
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
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
                "PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "true",  # why a request was answered 503
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
    return shot(command, url, png, *args)[0]


def shot(command: str, url: str, png: str, *args: str) -> tuple[Path, list[str]]:
    """``shoot``, with the lines the command printed."""
    out = IMAGES / png
    result = subprocess.run(
        ["node", str(SHOOT), command, url, str(out), *args],
        cwd=SHOOT.parent,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        timeout=420,
    )
    say(f"  {out.relative_to(PROJECT_DIR)}")
    lines = result.stdout.splitlines()
    for line in lines:
        say(f"    {line}", markup=False)
    return out, lines


class Api:
    """The few Prefect REST calls the tour needs."""

    def __init__(self, ui_url: str) -> None:
        self.http = httpx.Client(base_url=f"{ui_url}/api", timeout=30)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        for attempt in range(1, 6):  # 503 is Prefect's "retry" (SQLite busy): its client retries
            response = self.http.request(method, path, json=body)
            if response.status_code != 503 or attempt == 5:
                break
            say(f"  (Prefect answered {method} {path} with 503: retrying)")
            time.sleep(2 * attempt)
        response.raise_for_status()
        return response.json()

    def deployment_id(self, name: str) -> str:
        return str(self.call("GET", f"/deployments/name/{name}")["id"])

    def run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"/flow_runs/{run_id}")
        return result

    def newest_artifact(self, run_id: str) -> str:
        return str(self.artifact(run_id)["id"])

    def artifact(self, run_id: str) -> dict[str, Any]:
        """The run's newest artifact (its incident record or readout): id, description, data."""
        body = {"artifacts": {"flow_run_id": {"any_": [run_id]}}, "sort": "CREATED_DESC"}
        found = self.call("POST", "/artifacts/filter", {**body, "limit": 1})
        if not found:
            raise RuntimeError(f"flow run {run_id} left no artifact")
        result: dict[str, Any] = found[0]
        return result

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


def finished(api: Api, run_id: str, timeout: float = 180) -> dict[str, Any]:
    run: dict[str, Any] = until(
        f"flow run {run_id} to end", lambda: state_of(api, run_id, *FINAL), timeout
    )
    say(f"  run {run['name']} ended {run['state']['name']}: {run['state']['message']}")
    return run


Step = tuple[str, str, str | None]  # a planned step as the record lists it: action, target, detail
PLAN_LINE = re.compile(r"^\d+\. \*\*([a-z-]+)\*\* `([^`]+)`(?:: (.*))?$")


def dry_run_plan(api: Api, run_id: str, title: str) -> list[Step]:
    """The plan in the run's incident record, which must be a dry run's (nothing changed)."""
    artifact = api.artifact(run_id)
    data = str(artifact["data"])
    if artifact["description"] != title:
        raise RuntimeError(f"the record is titled {artifact['description']!r}, not {title!r}")
    if "- outcome: **dry run: nothing changed**" not in data:
        raise RuntimeError(f"the record's outcome is not the dry run's:\n{data[:1500]}")
    _, found, section = data.partition("## Plan (dry run: nothing was changed)\n\n")
    if not found:
        raise RuntimeError(f"the record has no dry-run plan:\n{data[:1500]}")
    steps: list[Step] = []
    for line in section.splitlines():
        if not line.strip():
            break
        if not (match := PLAN_LINE.match(line)):
            raise RuntimeError(f"not a plan step in the record: {line!r}")
        action, target, detail = match.groups()
        steps.append((action, target, detail))
    return steps


def dry_run_in_form(
    api: Api, ui: str, deployment: str, png: str, request: dict[str, Any], who: list[str]
) -> tuple[list[Path], dict[str, Any]]:
    """The deployment's Custom run form, shot as it opens and filled in for a dry run (request as
    JSON), submitted; the run the UI created must have exactly these parameters and complete."""
    deployment_id = api.deployment_id(deployment)
    filled = IMAGES / png.replace("-form.png", "-form-filled.png")
    form = f"{ui}/deployments/deployment/{deployment_id}"
    out, lines = shot("dry-run", form, png, str(filled), json.dumps(request), *who)
    ids = [line.removeprefix("flow-run: ") for line in lines if line.startswith("flow-run: ")]
    if len(ids) != 1:
        raise RuntimeError(f"shoot.mjs named {len(ids)} created flow runs, not 1: {lines}")
    run = api.run(ids[0])
    if run["deployment_id"] != deployment_id:
        raise RuntimeError(f"flow run {ids[0]} is not of {deployment} ({deployment_id})")
    sent = {
        "request": request,
        "operator": who[0],
        "reason": who[1],
        "dry_run": True,
        "require_approval": False,
        "alert": None,
    }
    if run["parameters"] != sent:
        raise RuntimeError(f"the run's parameters are {run['parameters']}, the form had {sent}")
    say(f"  flow run {run['id']}: its parameters are the form's: {json.dumps(run['parameters'])}")
    run = finished(api, run["id"], timeout=300)
    if run["state"]["type"] != "COMPLETED":
        raise RuntimeError(f"the dry run ended {run['state']['name']}: {run['state']['message']}")
    return [out, filled], run


def tour(stack: Stack) -> list[Path]:
    ui, api = f"{stack.ui_url}/v2", Api(stack.ui_url)

    def record(run_id: str) -> str:  # the run's incident record (or readout), newest version
        return f"{ui}/artifacts/artifact/{api.newest_artifact(run_id)}"

    def ended(run_id: str) -> dict[str, Any]:
        return finished(api, run_id)

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
    pngs += recover_many(stack, api, ui, record)
    pngs += resume_paused(stack, api, ui, record)
    return pngs


def recover_many(stack: Stack, api: Api, ui: str, record: Callable[[str], str]) -> list[Path]:
    """The batch runbook's Custom run form: a dry run over the keys an outage failed."""
    admin = stack.restate.admin_url
    since = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    failed: dict[str, str] = {}  # key -> its failed run
    for n in range(1, 4):
        key = f"outage_{uuid.uuid4().hex[:6]}_{n}"
        failed[key] = submit_workflow(stack.restate.ingress_url, key, "fail")
        wait_for_status(admin, failed[key], "completed", timeout=60)
    say(f"{WORKFLOW}: {len(failed)} keys fail terminally: {', '.join(failed)}")

    say("the recover-many deployment's Custom run form, submitted as a dry run")
    request = {
        "serviceName": WORKFLOW,
        "errorContains": "upstream provider",
        "failedSince": since,
        "limit": 10,
    }
    who = ["erin", "INC-1240: provider outage; plan the keys it failed"]
    pngs, run = dry_run_in_form(
        api, ui, "recover-stuck-workflows/recover-many", "recover-many-form.png", request, who
    )
    if run["name"] != f"recover-stuck-workflows/{WORKFLOW}/* (dry run)":
        raise RuntimeError(f"the run is named {run['name']!r}")
    title = f"Dry run (nothing changed): recover-stuck-workflows {WORKFLOW}/*"
    plan = dry_run_plan(api, run["id"], title)
    wanted = {("recover", f"{WORKFLOW}/{key}", invocation) for key, invocation in failed.items()}
    if len(plan) != len(wanted) or set(plan) != wanted:
        raise RuntimeError(f"the plan is {plan}, not a recover step for each key: {wanted}")
    for key, invocation in failed.items():  # a dry run: each key's failed run and state stay
        run_rows = query(
            admin,
            "SELECT status, completion_result FROM sys_invocation "
            f"WHERE id = {invocation_id_literal(invocation)}",
        )
        state_rows = query(
            admin,
            f"SELECT count(*) AS n FROM state WHERE service_name = {name_literal(WORKFLOW)} "
            f"AND service_key = {name_literal(key)}",
        )
        if run_rows != [{"status": "completed", "completion_result": "failure"}]:
            raise RuntimeError(f"the dry run changed {key}'s failed run: {run_rows}")
        if not state_rows or not state_rows[0]["n"]:
            raise RuntimeError(f"the dry run cleared {key}'s state")
    say(f"  its record plans recover for the {len(plan)} keys; in Restate they are untouched")
    pngs.append(
        shoot("page", record(run["id"]), "recover-many-dry-run.png", "Plan (dry run: nothing")
    )
    return pngs


def resume_paused(stack: Stack, api: Api, ui: str, record: Callable[[str], str]) -> list[Path]:
    """The resume runbook's Custom run form: a dry run over a service's paused invocations."""
    admin = stack.restate.admin_url
    paused: list[str] = []
    for n in range(1, 3):
        key = f"flaky_{uuid.uuid4().hex[:6]}_{n}"
        paused.append(submit_workflow(stack.restate.ingress_url, key, "x", workflow=FLAKY))
        wait_for_status(admin, paused[-1], "paused", timeout=120)
    say(f"{FLAKY}: {len(paused)} runs used up their retries and paused: {', '.join(paused)}")

    say("the resume deployment's Custom run form, submitted as a dry run")
    request = {"serviceName": FLAKY, "deployment": "latest", "limit": 10}
    who = ["erin", "INC-1241: the flaky dependency is fixed; plan resuming its runs"]
    pngs, run = dry_run_in_form(
        api, ui, "resume-paused-invocations/resume", "resume-paused-form.png", request, who
    )
    if run["name"] != f"resume-paused-invocations/{FLAKY}/* (dry run)":
        raise RuntimeError(f"the run is named {run['name']!r}")
    title = f"Dry run (nothing changed): resume-paused-invocations {FLAKY}/*"
    plan = dry_run_plan(api, run["id"], title)
    wanted = {("resume", invocation, f"{FLAKY} on latest") for invocation in paused}
    if len(plan) != len(wanted) or set(plan) != wanted:
        raise RuntimeError(f"the plan is {plan}, not a resume step for each paused run: {wanted}")
    for invocation in paused:  # a dry run: they stay paused
        rows = query(
            admin,
            f"SELECT status FROM sys_invocation WHERE id = {invocation_id_literal(invocation)}",
        )
        if rows != [{"status": "paused"}]:
            raise RuntimeError(f"the dry run changed {invocation}: {rows}")
    say(f"  its record plans resume for the {len(plan)} runs; in Restate they are still paused")
    pngs.append(
        shoot("page", record(run["id"]), "resume-paused-dry-run.png", "Plan (dry run: nothing")
    )
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
