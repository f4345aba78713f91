"""Serve every runbook deployment from one process (no work pool, no worker).

    RESTATE_ADMIN_URL=... RESTATE_INGRESS_URL=... PREFECT_API_URL=... python deployments/serve.py

The same deployments as prefect.yaml (names, doctor schedule, parameter schemas, concurrency).
Run it from the checkout: each run re-imports its entrypoint file from here.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Schedule

CHECKOUT = Path(__file__).resolve().parents[1]
WRITES = [
    "flows/force_redeploy.py:force_redeploy",
    "flows/cleanup_stale_deployments.py:cleanup_stale_deployments",
    "flows/recover_stuck_workflow.py:recover_stuck_workflow",
]


def deployments() -> list[RunnerDeployment]:
    doctor = RunnerDeployment.from_entrypoint(
        str(CHECKOUT / "flows/doctor.py:doctor"),
        name="doctor",
        schedules=[
            Schedule(
                interval=timedelta(minutes=5), slug="restate-doctor-every-5-minutes", timezone="UTC"
            )
        ],
        tags=["restate-recovery", "read-only"],
        enforce_parameter_schema=True,
    )
    writes = [
        RunnerDeployment.from_entrypoint(
            str(CHECKOUT / entrypoint),
            name="manual",
            tags=["restate-recovery", "write"],
            enforce_parameter_schema=True,
            concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
            ),
        )
        for entrypoint in WRITES
    ]
    return [doctor, *writes]


if __name__ == "__main__":
    serve(*deployments(), limit=4)
