"""Load and run the runbook flows from the checkout's ``flows/`` directory.

Flow files are Prefect entrypoints (``flows/doctor.py:doctor``), loaded the way a deployment
loads them, so the CLI, the API and deployments all run the very same flow.
"""

from __future__ import annotations

import sys
from functools import cache
from typing import Any

from restate_recovery.settings import PROJECT_DIR

FLOWS_DIR = PROJECT_DIR / "flows"

ENTRYPOINTS = {
    "doctor": "doctor.py:doctor",
    "force-redeploy": "force_redeploy.py:force_redeploy",
    "cleanup-stale-deployments": "cleanup_stale_deployments.py:cleanup_stale_deployments",
    "recover-stuck-workflow": "recover_stuck_workflow.py:recover_stuck_workflow",
}


def entrypoint(name: str) -> str:
    return str(FLOWS_DIR / ENTRYPOINTS[name])


@cache
def load_flow(name: str) -> Any:
    """The Prefect flow object for a runbook (imports prefect: configure its env first)."""
    from prefect.flows import load_flow_from_entrypoint

    # The flows import the checkout's ``tasks`` package and Prefect puts only the working
    # directory on sys.path: without this, the CLI and the API fail outside the checkout.
    if str(PROJECT_DIR) not in sys.path:
        sys.path.insert(0, str(PROJECT_DIR))
    return load_flow_from_entrypoint(entrypoint(name), use_placeholder_flow=False)


async def run_flow(name: str, **parameters: Any) -> Any:
    """Run a runbook flow in this process and return its result (errors are re-raised)."""
    return await load_flow(name)(**parameters)
