"""The incident record a write runbook leaves as an artifact, written for a person in an incident:
what was asked (who, why, the alert behind it), the plan or the steps done, the approval, the
outcome, the doctor before and after. Its title says what phase the run is in: a plan awaiting
approval reads as one, not as if it were done. Everything in it is redacted."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from restate_recovery.doctor.render import readout_markdown, unhealthy_components
from restate_recovery.errors import OperatorError, error_body
from restate_recovery.models import AlertContext, DoctorReadout
from restate_recovery.redaction import redact, redact_text
from restate_recovery.schemas import PlannedStep

Phase = Literal["running", "awaiting approval", "done"]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class Approval:
    """A person's (or the auto-approval's) decision on a plan."""

    approved: bool
    approver: str
    reason: str
    at: str
    how: str  # "prefect-ui", "auto", "timeout"

    def line(self) -> str:
        verb = "approved" if self.approved else "rejected"
        if self.how == "timeout":
            return f"not answered by {self.at}: treated as rejected ({self.reason})"
        by = "auto-approval" if self.how == "auto" else self.approver
        return f"{verb} by {by} at {self.at}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "approved": self.approved,
            "approver": self.approver,
            "reason": self.reason,
            "at": self.at,
            "how": self.how,
        }


@dataclass
class IncidentRecord:
    action: str
    target: str
    parameters: dict[str, Any]
    dry_run: bool
    operator: str | None = None
    reason: str | None = None
    alert: AlertContext | None = None
    started_at: str = field(default_factory=now_iso)
    phase: Phase = "running"
    before: DoctorReadout | None = None
    after: DoctorReadout | None = None
    plan: list[PlannedStep] = field(default_factory=list)
    outcome: str = "not finished"
    details: list[str] = field(default_factory=list)
    verification: str | None = None
    error: dict[str, Any] | None = None
    approval: Approval | None = None

    def fail(self, exc: BaseException) -> None:
        refused = isinstance(exc, OperatorError) and exc.code == "RESTATE_WORKFLOW_RETRY_BLOCKED"
        rejected = isinstance(exc, OperatorError) and exc.code == "RESTATE_RECOVERY_REJECTED"
        self.outcome = "refused" if refused else "rejected" if rejected else "failed"
        self.error = redact(error_body(exc))
        self.phase = "done"

    def title(self) -> str:
        if self.phase == "awaiting approval":
            return f"Plan awaiting approval: {self.action} {self.target}"
        if self.dry_run:
            return f"Dry run (nothing changed): {self.action} {self.target}"
        return f"Incident record: {self.action} {self.target}"

    def plan_markdown(self) -> list[str]:
        """The plan as a numbered list (it fits the narrow Resume dialog, where a table is cut):
        what the approval form shows, and the record's plan section."""
        return [
            f"{n}. **{s.action}** `{s.target}`" + (f": {s.detail}" if s.detail else "")
            for n, s in enumerate(self.plan, 1)
        ]

    def markdown(self) -> str:
        finished = now_iso() if self.phase == "done" else "not yet"
        lines = [
            f"# {self.title()}",
            "",
            f"- outcome: **{self.outcome}**",
            f"- started: {self.started_at}; finished: {finished}",
            f"- requested by: {self.operator or 'unknown'}; reason: {self.reason or 'none given'}",
        ]
        if self.alert is not None:
            lines.append(f"- started by {self.alert.line()}")
        lines.append("- parameters: `" + json.dumps(redact(self.parameters), sort_keys=True) + "`")
        if self.error:
            lines.append(f"- error: **{self.error.get('code')}**: {self.error.get('message')}")
            if self.error.get("data"):
                lines.append("- error data: `" + json.dumps(self.error["data"]) + "`")
        if self.verification:
            lines.append(f"- verification: {self.verification}")
        if self.approval is not None:
            lines += ["", "## Approval", "", f"- {self.approval.line()}"]
        if self.plan:
            heading = (
                "## Plan (nothing done yet)"
                if self.phase == "awaiting approval"
                else "## Plan (dry run: nothing was changed)"
                if self.dry_run
                else "## Steps done"
                if self.outcome == "acknowledged"
                else "## Plan (what it set out to do)"
            )
            lines += ["", heading, "", *self.plan_markdown()]
        if self.details:
            lines += ["", "## Details", ""] + [f"- {d}" for d in redact(self.details)]
        for title, readout in (("Doctor before", self.before), ("Doctor after", self.after)):
            if readout is not None:
                not_ok = unhealthy_components(readout)
                failures = len(readout.invocations.recent_failures)
                state = "components ok" if not not_ok else "not ok: " + ", ".join(not_ok)
                if failures:
                    state += f", {failures} recent failure" + ("s" if failures > 1 else "")
                lines += ["", f"## {title}: {state}"]
                body = readout_markdown(readout).split("\n", 2)[2]  # drop its own title
                lines += ["", body]
        return redact_text("\n".join(lines) + "\n")  # stored by Prefect: never a credential
