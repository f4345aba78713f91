"""The main job on embedded defaults: start a local Restate and the sample service, make one
workflow fail, run the doctor, recover the failed key, show that its next run starts blank, and
run the doctor again. Everything stops when the job ends.

    ./scripts/demo            (or .venv/bin/python -m tools.demo)
    ./scripts/demo --up       the same Restate, then the whole control plane on it
                              (restate-recovery up: Prefect with its UI, the deployments, the
                              automations, the operator API) until Ctrl-C

The runbooks run the way the CLI's local mode runs them (in this process, audited as the OS user,
recorded in Prefect: the temporary server unless PREFECT_API_URL names one).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import httpx
from rich.console import Console

from restate_recovery.settings import DATA_DIR, get_settings
from tests.support.local_stack import (
    WORKFLOW,
    RestateServer,
    SampleService,
    submit_workflow,
    wait_for_status,
)


def run_demo(console: Console) -> int:
    import asyncio

    from restate_recovery.cli.local import answer_doctor, run_write
    from restate_recovery.cli.remote import Answer
    from restate_recovery.cli.render import render_readout
    from restate_recovery.runbooks import DOCTOR, RECOVER_STUCK_WORKFLOW

    def doctor() -> Answer:
        def shown(answer: Answer) -> None:
            if answer.ok:
                render_readout(answer.body, console)

        return asyncio.run(answer_doctor(DOCTOR, reason="demo", shown=shown))

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="demo-", dir=DATA_DIR))
    console.print(f"[bold]1.[/] starting restate-server and the sample service (data in {work})")
    server = RestateServer(work / "restate").start()
    service = SampleService(work).start()
    try:
        deployment_id = server.register(service.url)
        console.print(f"   admin {server.admin_url}, ingress {server.ingress_url}")
        console.print(f"   registered {service.url} as {deployment_id}")

        key = f"invitation_{uuid.uuid4().hex[:12]}"
        console.print(f"[bold]2.[/] submitting {WORKFLOW}/{key}, which fails terminally")
        invocation_id = submit_workflow(server.ingress_url, key, "fail")
        wait_for_status(server.admin_url, invocation_id, "completed")
        console.print(f"   {invocation_id} completed with a terminal failure")

        console.print("[bold]3.[/] the doctor")
        os.environ["RESTATE_ADMIN_URL"] = server.admin_url
        os.environ["RESTATE_INGRESS_URL"] = server.ingress_url
        os.environ["RESTATE_SERVICE_URL"] = service.url
        get_settings.cache_clear()
        readout = doctor()
        failed_keys = [f["serviceKey"] for f in readout.body["invocations"]["recentFailures"]]
        if not readout.ok or key not in failed_keys:
            console.print(f"[red]the doctor did not report {key} as failed: {readout.body}[/]")
            return 1
        console.print(f"[green]the doctor reports {WORKFLOW}/{key} as failed[/]")

        console.print(f"[bold]4.[/] recover-stuck-workflow {WORKFLOW} {key}")
        body = {"serviceName": WORKFLOW, "serviceKey": key}
        result = run_write(RECOVER_STUCK_WORKFLOW, body, reason="demo", dry_run=False)
        console.print(f"   {result.body}")
        if not result.ok:
            return 1

        console.print(f"[bold]5.[/] resubmitting {key}: it must start from blank state")
        rerun = httpx.post(
            f"{server.ingress_url}/{WORKFLOW}/{key}/run", json={"mode": "succeed"}, timeout=30
        )
        console.print(f"   {rerun.status_code} {rerun.text}")
        if rerun.status_code != 200 or rerun.json().get("markerFoundAtStart") is not None:
            console.print("[red]the resubmitted run did not start blank[/]")
            return 1

        console.print("[bold]6.[/] the doctor again")
        after = doctor()
        if any(f["serviceKey"] == key for f in after.body["invocations"]["recentFailures"]):
            console.print(f"[red]{key} is still among the failures[/]")
            return 1
        console.print(f"[green]{WORKFLOW}/{key} recovered and ran again from blank state[/]")
        return 0
    finally:
        service.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def run_control_plane(console: Console) -> int:
    """``--up``: a local restate-server and the sample service (one key failed terminally, for
    the doctor to find), then ``restate-recovery up`` pointed at them, until Ctrl-C."""
    import signal
    import subprocess

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="demo-up-", dir=DATA_DIR))
    server = RestateServer(work / "restate").start()
    service = SampleService(work).start()
    try:
        server.register(service.url)
        key = f"invitation_{uuid.uuid4().hex[:12]}"
        wait_for_status(server.admin_url, submit_workflow(server.ingress_url, key, "fail"),
                        "completed")  # fmt: skip
        console.print(f"restate-server: admin {server.admin_url}, ingress {server.ingress_url}; "
                      f"{WORKFLOW}/{key} failed terminally")  # fmt: skip
        env = {
            **os.environ,
            "RESTATE_ADMIN_URL": server.admin_url,
            "RESTATE_INGRESS_URL": server.ingress_url,
            "RESTATE_SERVICE_URL": service.url,
        }
        up = subprocess.Popen(
            [str(Path(sys.executable).parent / "restate-recovery"), "up"], env=env
        )
        try:
            return up.wait()
        except KeyboardInterrupt:  # Ctrl-C reached both: up stops its parts
            up.send_signal(signal.SIGINT)
            return up.wait(timeout=120)
    finally:
        service.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if "--up" in sys.argv[1:]:
        sys.exit(run_control_plane(Console()))
    sys.exit(run_demo(Console()))
