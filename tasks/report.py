"""What every doctor run leaves, whether it probed or records an answer already given: the
readout as a markdown artifact, one Prefect event per finding (for the automations) and the
verdict as a log line. One doctor path: the scheduled doctor and the recorded answers both end
here."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from restate_recovery.doctor.findings import doctor_findings
from restate_recovery.doctor.render import (
    ARTIFACT_DESCRIPTION,
    ARTIFACT_KEY,
    readout_markdown,
    verdict,
)
from restate_recovery.models import DoctorReadout
from restate_recovery.settings import get_settings
from tasks.events import emit_findings


async def report_readout(readout: DoctorReadout) -> None:
    await acreate_markdown_artifact(
        markdown=readout_markdown(readout), key=ARTIFACT_KEY, description=ARTIFACT_DESCRIPTION
    )
    emit_findings(doctor_findings(readout, get_settings().restate_service_url))
    get_run_logger().info("doctor: %s", verdict(readout))
