"""Publish the doctor's findings as Prefect events (for automations)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from restate_recovery.doctor.findings import Finding


@task(name="emit-findings", cache_policy=NO_CACHE)
def emit_findings(findings: list[Finding]) -> int:
    logger = get_run_logger()
    for finding in findings:
        emit_event(
            event=finding.event,
            resource=finding.resource,
            payload=finding.payload,
        )
        logger.info("event %s for %s", finding.event, finding.resource["prefect.resource.id"])
    return len(findings)
