"""What every doctor run leaves, whether it probed or records an answer already given: the
readout as a markdown artifact (its verdict first, then what needs attention with the exact
parameters to run), one Prefect event per finding (for the automations), and the verdict as a log
line and as the run's state message. One doctor path: the scheduled doctor and the recorded
answers both end here."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.client.schemas.objects import State
from prefect.states import Completed

from restate_recovery import plans
from restate_recovery.doctor.findings import Finding, doctor_findings, in_context
from restate_recovery.doctor.render import (
    ARTIFACT_DESCRIPTION,
    ARTIFACT_KEY,
    readout_markdown,
    verdict,
)
from restate_recovery.models import AlertContext, DoctorReadout
from restate_recovery.settings import get_settings
from tasks.events import emit_findings


def placed_findings(readout: DoctorReadout, alert: AlertContext | None) -> list[Finding]:
    """The doctor's findings, each actionable one with its target's state (``plans``)."""
    findings = doctor_findings(readout, get_settings().restate_service_url)
    targets = [f.target for f in findings if f.target is not None]
    try:
        states: dict[str, str] = dict(plans.finding_states(targets, alert=alert is not None))
    except Exception as exc:  # the audit database is away: the runs' own claims still hold
        get_run_logger().warning(
            "pending plans not read (%s): findings are new", type(exc).__name__
        )
        states = {}
    return in_context(findings, states, alert)


async def report_readout(readout: DoctorReadout, alert: AlertContext | None = None) -> State:
    logger = get_run_logger()
    if alert is not None:
        logger.info("started by %s", alert.line())
    findings = placed_findings(readout, alert)
    await acreate_markdown_artifact(
        markdown=readout_markdown(readout, findings, alert),
        key=ARTIFACT_KEY,
        description=ARTIFACT_DESCRIPTION,
    )
    emit_findings(findings)
    line = verdict(readout, findings)
    for finding in findings:
        if finding.runbook:
            logger.info("needs attention: %s", finding.line())
    logger.info("doctor: %s", line)
    return Completed(message=line, data=readout)
