"""Serve every runbook deployment from one process (no work pool, no worker).

    RESTATE_ADMIN_URL=... RESTATE_INGRESS_URL=... PREFECT_API_URL=... python deployments/serve.py

The same deployments as prefect.yaml (names, doctor schedule, parameter schemas),
built from the runbook registry. Each run imports its flow by module (``flows.doctor``) in a
process of its own, so it works from any directory where the package is installed.
"""

from __future__ import annotations

from datetime import timedelta

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Schedule
from prefect.types.entrypoint import EntrypointType

from restate_recovery.runbooks import RUNBOOKS, Runbook

DOCTOR_SCHEDULE = Schedule(
    interval=timedelta(minutes=5), slug="restate-doctor-every-5-minutes", timezone="UTC"
)


def deployment(runbook: Runbook) -> RunnerDeployment:
    made: RunnerDeployment
    if not runbook.writes:
        made = runbook.flow().to_deployment(  # type: ignore[assignment]  # sync outside a loop
            name=runbook.deployment,
            schedules=[DOCTOR_SCHEDULE],
            tags=["restate-recovery", "read-only"],
            enforce_parameter_schema=True,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        return made
    # No concurrency limit: see prefect.yaml (a paused run would crash at its lease renewal).
    made = runbook.flow().to_deployment(  # type: ignore[assignment]
        name=runbook.deployment,
        tags=["restate-recovery", "write"],
        enforce_parameter_schema=True,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return made


def deployments() -> list[RunnerDeployment]:
    return [deployment(runbook) for runbook in RUNBOOKS]


if __name__ == "__main__":
    serve(*deployments(), limit=4)
