"""The incident record a write runbook leaves as an artifact: doctor before, the action and its
parameters, the outcome, doctor after. Everything in it is redacted."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from restate_recovery.doctor.render import readout_markdown, unhealthy_components
from restate_recovery.errors import OperatorError, error_body
from restate_recovery.models import DoctorReadout
from restate_recovery.redaction import redact, redact_text
from restate_recovery.schemas import PlannedStep


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class IncidentRecord:
    action: str
    parameters: dict[str, Any]
    dry_run: bool
    started_at: str = field(default_factory=_now)
    before: DoctorReadout | None = None
    after: DoctorReadout | None = None
    plan: list[PlannedStep] = field(default_factory=list)
    outcome: str = "not finished"
    details: list[str] = field(default_factory=list)
    verification: str | None = None
    error: dict[str, Any] | None = None
    approval: dict[str, Any] | None = None  # who, when, why (approval-gated runs)

    def fail(self, exc: BaseException) -> None:
        refused = isinstance(exc, OperatorError) and exc.code == "RESTATE_WORKFLOW_RETRY_BLOCKED"
        self.outcome = "refused" if refused else "failed"
        self.error = redact(error_body(exc))

    def markdown(self) -> str:
        lines = [
            f"# Incident record: {self.action}" + (" (dry run)" if self.dry_run else ""),
            "",
            f"- started: {self.started_at}, finished: {_now()}",
            f"- outcome: **{self.outcome}**",
            "- parameters: `" + json.dumps(redact(self.parameters), sort_keys=True) + "`",
        ]
        if self.error:
            lines.append("- error: `" + json.dumps(self.error, sort_keys=True) + "`")
        if self.approval:
            lines.append("- approval: `" + json.dumps(self.approval, sort_keys=True) + "`")
        if self.verification:
            lines.append(f"- verification: {self.verification}")
        if self.plan:
            lines += ["", "## Plan" if self.dry_run else "## Steps", ""]
            lines += ["| action | target | detail |", "|---|---|---|"]
            lines += [
                f"| {s.action} | {s.target} | {(s.detail or '').replace('|', '/')} |"
                for s in self.plan
            ]
        if self.details:
            lines += ["", "## Details", ""] + [f"- {d}" for d in redact(self.details)]
        for title, readout in (("Doctor before", self.before), ("Doctor after", self.after)):
            if readout is not None:
                not_ok = unhealthy_components(readout)
                lines += ["", f"## {title}: " + ("all ok" if not not_ok else ", ".join(not_ok))]
                body = readout_markdown(readout).split("\n", 2)[2]  # drop its own title
                lines += ["", body]
        return redact_text("\n".join(lines) + "\n")  # stored by Prefect: never a credential
