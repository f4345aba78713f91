"""Request bodies and responses of the runbooks (the spec's shapes, camelCase on the wire).

Each request model is validated once, where the request enters (the HTTP route, the CLI's local
mode, a Prefect deployment run's parameters), and is then handed as it is to the runbook's flow,
which takes it as its one parameter: the same model is the Prefect UI form (field descriptions,
patterns, defaults) and the route's body. Invalid input is refused before anything is touched.

A service URL is sealed in the same step: the model keeps the URL as given (Restate gets it
intact, credentials included) and every serialization of it, which is what Prefect stores as
the run's parameters and what the audit row and the incident record keep, has the credentials
replaced (``http://REDACTED@host/``). A URL that arrives already redacted (a deployment run
started from the UI or an automation) is matched with ``RESTATE_SERVICE_URL`` of the process
that runs it, which holds the credentials.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from restate_recovery.errors import InvalidRequestError, PlanChangedError
from restate_recovery.models import ApiModel
from restate_recovery.redaction import REDACTED, redact_text
from restate_recovery.sql import NAME_PATTERN


def absolute_http_url(value: str) -> str:
    """Accept an absolute http(s) URL with a host, unchanged (the exact string matters)."""
    if not isinstance(value, str) or value != value.strip() or not value:
        raise ValueError("must be an absolute http(s) URL without surrounding spaces")
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise ValueError("must be an absolute http(s) URL") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an absolute http(s) URL")
    if url.port is not None and not 1 <= url.port <= 65535:
        raise ValueError(f"port {url.port} is out of range (1-65535)")
    return value


def unseal(url: str) -> str:
    """The URL with its credentials: as given, or, when it arrives redacted, the configured
    ``RESTATE_SERVICE_URL`` whose redacted form it is."""
    if REDACTED not in url:
        return url
    from restate_recovery.settings import get_settings

    configured = get_settings().restate_service_url
    for form in (configured, f"{configured}/") if configured else ():
        if redact_text(form) == url:  # as configured, or as Restate stores it (trailing slash)
            return form
    raise ValueError(
        "its credentials are not available here: give the URL with its credentials, or set "
        "RESTATE_SERVICE_URL with them where the runbook runs"
    )


class RequestModel(ApiModel):
    model_config = ConfigDict(
        alias_generator=ApiModel.model_config.get("alias_generator"),
        populate_by_name=True,
        frozen=True,
        extra="forbid",
        strict=True,
    )

    @property
    def target(self) -> str:
        """What the request acts on, as it may be shown and stored (run names, logs)."""
        raise NotImplementedError


class ServiceUrlRequest(RequestModel):
    """A request that names a service URL: kept intact in memory, redacted when serialized."""

    service_url: str = Field(max_length=2048)

    @field_validator("service_url")
    @classmethod
    def _check_and_unseal(cls, value: str) -> str:
        return unseal(absolute_http_url(value))

    @field_serializer("service_url")
    def _sealed(self, value: str) -> str:
        return redact_text(value)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, redact_text(value) if name == "service_url" else value

    @property
    def target(self) -> str:
        return redact_text(self.service_url)


class ForceRedeployRequest(ServiceUrlRequest):
    service_url: str = Field(
        title="Service URL",
        description="The live durable workflow service URL to register (absolute http/https).",
        max_length=2048,
    )
    force: bool = Field(
        default=True,
        title="Force",
        description="Send a forced registration (always sent explicitly; Restate's own default "
        "is false).",
    )


class CleanupStaleDeploymentsRequest(ServiceUrlRequest):
    service_url: str = Field(
        title="Service URL",
        description="The exact registered service URL of the deployment to keep (copy it from "
        "doctor's deployments.items[].serviceUrl, trailing slash included).",
        max_length=2048,
    )
    force_drain: bool = Field(
        default=False,
        title="Force drain",
        description="Kill work pinned to stale deployments instead of waiting for it to drain "
        "(for known-dead stale deployments).",
    )


class RecoverStuckWorkflowRequest(RequestModel):
    service_name: str = Field(
        title="Service name",
        description="Workflow service name, e.g. IdentityRecoveryWorkflow.",
        pattern=NAME_PATTERN,
        max_length=255,
    )
    service_key: str = Field(
        title="Service key",
        description="The exact workflow key of the failed invocation.",
        pattern=NAME_PATTERN,
        max_length=255,
    )

    @property
    def target(self) -> str:
        return f"{self.service_name}/{self.service_key}"


DEPLOYMENT_CHOICE = r"^(keep|latest|dp_[0-9a-zA-Z]+)$"
INVOCATION_ID_PATTERN = r"^inv_[0-9a-zA-Z]+$"


class ResumePausedInvocationsRequest(RequestModel):
    """Which paused invocations to resume, and on which deployment. Exactly one selection: one
    invocation id, or a service (and optionally one key)."""

    invocation_id: str | None = Field(
        default=None,
        title="Invocation id",
        description="One invocation (inv_...), e.g. from the doctor's recentFailures.",
        pattern=INVOCATION_ID_PATTERN,
        max_length=64,
    )
    service_name: str | None = Field(
        default=None,
        title="Service name",
        description="Every paused invocation of this service (or of one key of it).",
        pattern=NAME_PATTERN,
        max_length=255,
    )
    service_key: str | None = Field(
        default=None,
        title="Service key",
        description="Only this key of the service.",
        pattern=NAME_PATTERN,
        max_length=255,
    )
    deployment: str = Field(
        default="latest",
        title="Deployment",
        description="Where they run on: latest (the service's newest deployment, e.g. with the "
        "fix), keep (the one each is pinned to), or a deployment id (dp_...) that serves them.",
        pattern=DEPLOYMENT_CHOICE,
        max_length=64,
    )
    limit: int = Field(
        default=100,
        ge=1,
        le=500,
        title="Limit",
        description="At most this many invocations of a service selection (newest first).",
    )

    @model_validator(mode="after")
    def _one_selection(self) -> ResumePausedInvocationsRequest:
        if self.invocation_id is None and self.service_name is None:
            raise ValueError("give invocationId (one invocation) or serviceName (its paused ones)")
        if self.invocation_id is not None and self.service_name is not None:
            raise ValueError("give invocationId or serviceName, not both")
        if self.service_key is not None and self.service_name is None:
            raise ValueError("serviceKey needs serviceName")
        return self

    @property
    def target(self) -> str:
        if self.invocation_id is not None:
            return self.invocation_id
        return (
            f"{self.service_name}/{self.service_key}"
            if self.service_key
            else f"{self.service_name}/*"
        )


def iso_instant(value: str | None) -> str | None:
    """An ISO 8601 instant with its zone (``2026-12-01T10:00:00Z``), kept as given."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError("must be an ISO 8601 time, e.g. 2026-12-01T10:00:00Z") from exc
    if parsed.tzinfo is None:
        raise ValueError("must say its time zone (Z or +hh:mm)")
    return value


class RecoverStuckWorkflowsRequest(RequestModel):
    """A selection of terminal-failed keys of one workflow service, each recovered as
    recover-stuck-workflow recovers one, at a bounded rate."""

    service_name: str = Field(
        title="Service name", description="Workflow service name.", pattern=NAME_PATTERN,
        max_length=255,
    )  # fmt: skip
    error_contains: str | None = Field(
        default=None,
        title="Error contains",
        description="Only keys whose failure message holds this text (e.g. [500] or a word).",
        min_length=1,
        max_length=200,
    )
    failed_since: str | None = Field(
        default=None, title="Failed since", description="ISO 8601 time, e.g. 2026-12-01T10:00Z."
    )
    failed_until: str | None = Field(
        default=None, title="Failed until", description="ISO 8601 time."
    )
    limit: int = Field(default=100, ge=1, le=1000, title="Limit", description="At most N keys.")
    rate: float = Field(
        default=20.0, gt=0, le=200, title="Rate", description="Keys started per second, at most."
    )
    concurrency: int = Field(
        default=4, ge=1, le=16, title="Concurrency", description="Keys recovered at once."
    )

    _times = field_validator("failed_since", "failed_until")(iso_instant)

    @property
    def target(self) -> str:
        return f"{self.service_name}/*"


class KeyOutcome(ApiModel):
    service_key: str
    outcome: str  # recovered, skipped, failed
    detail: str | None = None


class BatchRecovered(ApiModel):
    """What recover-stuck-workflows answers: every key of the selection and what became of it."""

    acknowledged: bool = True
    recovered: int = 0
    skipped: int = 0
    failed: int = 0
    keys: list[KeyOutcome] = Field(default_factory=list)


class ExplainRequest(RequestModel):
    """One invocation, or every invocation of one workflow key."""

    invocation_id: str | None = Field(
        default=None, pattern=INVOCATION_ID_PATTERN, max_length=64, title="Invocation id"
    )
    service_name: str | None = Field(
        default=None, pattern=NAME_PATTERN, max_length=255, title="Service name"
    )
    service_key: str | None = Field(
        default=None, pattern=NAME_PATTERN, max_length=255, title="Service key"
    )

    @model_validator(mode="after")
    def _one_selection(self) -> ExplainRequest:
        by_key = self.service_name is not None and self.service_key is not None
        partial = (self.service_name is None) != (self.service_key is None)
        if partial or (self.invocation_id is None) == (not by_key):
            raise ValueError("give either invocationId, or serviceName and serviceKey")
        return self

    @property
    def target(self) -> str:
        return self.invocation_id or f"{self.service_name}/{self.service_key}"


class SkippedInvocation(ApiModel):
    id: str
    status: str


class ResumedInvocations(ApiModel):
    """What resume-paused-invocations answers: which it resumed, which it left and why."""

    acknowledged: Literal[True] = True
    resumed: list[str] = Field(default_factory=list)
    skipped: list[SkippedInvocation] = Field(default_factory=list)


class DoctorRequest(RequestModel):
    """The doctor takes an empty JSON object."""

    @property
    def target(self) -> str:
        return "restate"


RequestT = TypeVar("RequestT", bound=BaseModel)


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic errors as ``[{field, message}]`` (the input value is never echoed back)."""
    return [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]


def invalid_request(errors: list[dict[str, str]]) -> InvalidRequestError:
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return InvalidRequestError(f"Invalid request: {summary}", errors)


def parse_request(model: type[RequestT], data: Any) -> RequestT:
    """Validate a request body; ``InvalidRequestError`` (400) with the field errors otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_request(field_errors(exc)) from exc


class Acknowledged(ApiModel):
    acknowledged: Literal[True] = True


class Redeployed(ApiModel):
    acknowledged: Literal[True] = True
    deployment_id: str


class PlannedStep(ApiModel):
    """One thing a runbook would do (dry run) or did."""

    action: str
    target: str
    detail: str | None = None


def check_approved(
    approved: list[PlannedStep] | None, steps: list[PlannedStep], target: str
) -> None:
    """Refuse (``RESTATE_RECOVERY_PLAN_CHANGED``) a write whose plan is not the approved one
    (its writes: a wait for a timer that has passed since is no change)."""

    def acts(plan: list[PlannedStep]) -> list[dict[str, Any]]:  # a wait is no write
        return [s.model_dump() for s in plan if s.action != "wait"]

    if approved is None or acts(approved) == acts(steps):
        return

    def lines(plan: list[PlannedStep]) -> str:
        return "; ".join(f"{s.action} {s.target} ({s.detail or '-'})" for s in plan)

    raise PlanChangedError(
        f"The plan for {target} changed since it was approved: approved [{lines(approved)}], "
        f"now [{lines(steps)}]. Nothing was written; run again to plan (and approve) anew."
    )


class DryRunResult(ApiModel):
    """What a dry run answers: nothing was changed; ``plan`` lists what would be."""

    acknowledged: Literal[False] = False
    dry_run: Literal[True] = True
    plan: list[PlannedStep]


@dataclass(frozen=True)
class WriteOutcome:
    """What a write task hands back to its flow: the route's response and what it did."""

    result: ApiModel
    plan: list[PlannedStep] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
