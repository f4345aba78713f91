"""Time to recovery, unattended path: alert -> doctor -> plan paused for approval; approval ->
one write -> verified. The person's wait is not counted: the approval is given the moment the plan
waits, and the two halves are printed apart.

    .venv/bin/python -m tools.ttr [--rounds 3]

Starts its own restate-server, sample service and Prefect server (pre-migrated template) on free
loopback ports, deploys prefect.yaml with a process worker, applies the automations and starts the
operator API (tests/support/deployed.py, what the deployment tests run against). Each round makes
one workflow key fail terminally, posts an Alertmanager alert for it to the API and times:

- alert -> doctor done: the API took the alert, Prefect's automation started the doctor, it ran;
- doctor done -> plan waits: the doctor's finding started recover-stuck-workflow, which planned
  and paused;
- approval -> verified: resumed with an approval, the run wrote, ran its verify-doctor and ended
  Completed (the key's run is gone).

The worker polls every second (``PREFECT_WORKER_QUERY_SECONDS=1``; Prefect's default is 10 s,
which adds up to 10 s to each hop through the worker). It prints numbers; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from restate_recovery.settings import DATA_DIR

SESSION = Path(tempfile.mkdtemp(prefix="ttr-", dir=DATA_DIR if DATA_DIR.exists() else None))
for _name in list(os.environ):  # before Prefect is imported: this run's own Prefect
    if _name.startswith(("RESTATE_", "RECOVERY_", "PREFECT_")):
        del os.environ[_name]
os.environ["PREFECT_HOME"] = str(SESSION / "prefect-client")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"

from tests.support.local_stack import (  # noqa: E402
    PrefectServer,
    SampleService,
    free_port,
    submit_workflow,
    wait_for_status,
)

PORT = free_port()
os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{PORT}/api"

from prefect.flow_runs import aresume_flow_run  # noqa: E402

from tests.support.deployed import (  # noqa: E402
    Deployed,
    alert_body,
    deployed_stack,
    final_state,
    runs_of,
    send_alert,
    wait_for_run,
)

WORKFLOW = "IdentityRecoveryWorkflow"
RECOVER = "recover-stuck-workflow/recover"


async def one_round(deployed: Deployed) -> tuple[float, float, float]:
    key = f"ttr_{uuid.uuid4().hex[:8]}"
    invocation_id = submit_workflow(deployed.restate.ingress_url, key, "fail")
    wait_for_status(deployed.restate.admin_url, invocation_id, "completed")
    doctors = {r.id for r in await runs_of("restate-doctor/doctor")}

    alerted = time.monotonic()
    send_alert(deployed, alert_body(f"terminal failures on {key}"))
    await wait_for_run("restate-doctor/doctor", "COMPLETED", doctors, timeout=300)
    doctor_done = time.monotonic()
    paused = await wait_for_run(RECOVER, "PAUSED", set(), timeout=300, match=key)
    waiting = time.monotonic()

    await aresume_flow_run(
        paused.id, run_input={"decision": "approve", "approver": "ttr", "reason": "benchmark"}
    )
    approved = time.monotonic()
    state = await final_state(paused.id, timeout=300)
    verified = time.monotonic()
    if not state.is_completed():
        raise RuntimeError(f"the recovery did not complete: {state}")
    return doctor_done - alerted, waiting - doctor_done, verified - approved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    prefect = PrefectServer(
        home=SESSION / "prefect-server", template_cache=DATA_DIR / "prefect-template", port=PORT
    ).start()
    service = SampleService(SESSION).start()
    try:
        with deployed_stack(SESSION / "deployed", service.url) as deployed:
            rounds = [asyncio.run(one_round(deployed)) for _ in range(args.rounds)]
    finally:
        service.stop()
        prefect.stop()

    say = print  # noqa: T201 - a benchmark prints its numbers
    say(f"time to recovery, {args.rounds} rounds (seconds: median, min, max)")
    names = ("alert -> doctor done", "doctor done -> plan waits", "approval -> verified")
    for n, name in enumerate(names):
        samples = [r[n] for r in rounds]
        say(f"  {name:28s} {statistics.median(samples):6.1f} {min(samples):6.1f} "
              f"{max(samples):6.1f}")  # fmt: skip
    totals = [sum(r) for r in rounds]
    say(f"  {'total, without the wait':28s} {statistics.median(totals):6.1f} "
          f"{min(totals):6.1f} {max(totals):6.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
