"""Serve every runbook deployment from one process (no work pool, no worker).

    RESTATE_ADMIN_URL=... RESTATE_INGRESS_URL=... PREFECT_API_URL=... python deployments/serve.py

The same deployments as prefect.yaml (names, doctor schedule, parameter schemas, concurrency).
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Schedule

CHECKOUT = Path(__file__).resolve().parents[1]
WRITES = {
    "force-redeploy": "flows/force_redeploy.py:force_redeploy",
    "cleanup-stale-deployments": "flows/cleanup_stale_deployments.py:cleanup_stale_deployments",
    "recover-stuck-workflow": "flows/recover_stuck_workflow.py:recover_stuck_workflow",
}


def load(entrypoint: str) -> Any:
    return load_flow_from_entrypoint(str(CHECKOUT / entrypoint), use_placeholder_flow=False)


def deployments() -> list[Any]:
    doctor = load("flows/doctor.py:doctor").to_deployment(
        name="doctor",
        schedules=[
            Schedule(
                interval=timedelta(minutes=5), slug="restate-doctor-every-5-minutes", timezone="UTC"
            )
        ],
        tags=["restate-recovery", "read-only"],
    )
    writes = [
        load(entrypoint).to_deployment(
            name="manual",
            tags=["restate-recovery", "write"],
            concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
            ),
        )
        for entrypoint in WRITES.values()
    ]
    return [doctor, *writes]


if __name__ == "__main__":
    sys.path.insert(0, str(CHECKOUT))
    serve(*deployments(), limit=4)
