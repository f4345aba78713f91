"""The main job: start a local Restate and the sample service, make one workflow fail, run the
doctor, recover the failed key, show that its next run starts blank, and run the doctor again.
Everything stops when the job ends."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import httpx
from rich.console import Console

from restate_recovery.demo.local_stack import (
    WORKFLOW,
    RestateServer,
    SampleService,
    submit_workflow,
    wait_for_status,
)
from restate_recovery.settings import DATA_DIR, get_settings


def run_demo(console: Console) -> int:
    from restate_recovery.cli import render_readout
    from restate_recovery.runbooks import run_flow

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

        console.print("[bold]3.[/] running the doctor flow")
        os.environ["RESTATE_ADMIN_URL"] = server.admin_url
        os.environ["RESTATE_INGRESS_URL"] = server.ingress_url
        os.environ["RESTATE_SERVICE_URL"] = service.url
        get_settings.cache_clear()
        readout = asyncio.run(run_flow("doctor"))
        render_readout(readout, console)
        failed_keys = [f.service_key for f in readout.invocations.recent_failures]
        if key not in failed_keys:
            console.print(f"[red]the doctor did not report {key} as failed[/]")
            return 1
        console.print(f"[green]the doctor reports {WORKFLOW}/{key} as failed[/]")

        console.print(f"[bold]4.[/] recover-stuck-workflow {WORKFLOW} {key}")
        result = asyncio.run(
            run_flow("recover-stuck-workflow", service_name=WORKFLOW, service_key=key)
        )
        console.print(f"   {json.dumps(result)}")

        console.print(f"[bold]5.[/] resubmitting {key}: it must start from blank state")
        rerun = httpx.post(
            f"{server.ingress_url}/{WORKFLOW}/{key}/run", json={"mode": "succeed"}, timeout=30
        )
        console.print(f"   {rerun.status_code} {rerun.text}")
        if rerun.status_code != 200 or rerun.json().get("markerFoundAtStart") is not None:
            console.print("[red]the resubmitted run did not start blank[/]")
            return 1

        console.print("[bold]6.[/] doctor again")
        after = asyncio.run(run_flow("doctor"))
        render_readout(after, console)
        if any(f.service_key == key for f in after.invocations.recent_failures):
            console.print(f"[red]{key} is still among the failures[/]")
            return 1
        console.print(f"[green]{WORKFLOW}/{key} recovered and ran again from blank state[/]")
        return 0
    finally:
        service.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
