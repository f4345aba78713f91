"""Pydantic models: the doctor readout (the route's JSON, camelCase) and the admin API's answers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializationInfo, model_serializer
from pydantic.alias_generators import to_camel

ComponentStatus = Literal["ok", "degraded", "unreachable"]


def iso_utc(value: str | None) -> str | None:
    """Normalize a Restate timestamp (RFC 3339, up to nanoseconds) to ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    if not value:
        return None
    text = value.strip().replace("z", "Z")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    head, sep, rest = text.partition(".")
    if sep:  # Python parses at most microseconds: cut the fraction to six digits
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    utc = parsed.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


class ApiModel(BaseModel):
    """A model of the operator API: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = self.model_dump(mode="json", by_alias=True)
        return data


# --- the doctor readout ------------------------------------------------------------------------


class IngressReadout(ApiModel):
    status: ComponentStatus
    latency_ms: float | None = None


def _absent(value: Any) -> bool:
    return value is None


class AdminReadout(ApiModel):
    status: ComponentStatus
    latency_ms: float | None = None
    version: str | None = None
    # Beside the spec's fields, only when RESTATE_ADMIN_URL lists several admin APIs: the one
    # used (the first that answered) and those before it that did not answer (shown forms).
    url: str | None = Field(default=None, exclude_if=_absent)
    unanswered: list[str] | None = Field(default=None, exclude_if=_absent)


class DeploymentItem(ApiModel):
    id: str
    service_url: str
    created_at: str | None = None


class DeploymentsReadout(ApiModel):
    status: ComponentStatus
    items: list[DeploymentItem] = Field(default_factory=list)
    error: str | None = None


class ServiceItem(ApiModel):
    name: str
    revision: int | None = None

    @model_serializer(mode="wrap")
    def _omit_missing_revision(self, handler: Any, info: SerializationInfo) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.revision is None:  # the spec: "Number or omitted"
            data.pop("revision", None)
        return data


class ServicesReadout(ApiModel):
    status: ComponentStatus
    items: list[ServiceItem] = Field(default_factory=list)
    error: str | None = None


class InvocationFailure(ApiModel):
    id: str
    service_name: str | None
    service_key: str | None
    failed_at: str | None
    error_message: str | None
    status: str


class InvocationsReadout(ApiModel):
    status: ComponentStatus
    by_status: dict[str, int] = Field(default_factory=dict)
    recent_failures: list[InvocationFailure] = Field(default_factory=list)
    error: str | None = None


class ClusterNode(ApiModel):
    """One node, as Restate's ``nodes`` table has it (``restatectl sql``)."""

    id: str  # the plain node id, N1
    name: str | None = None
    state: str  # alive, dead, failing-over
    roles: list[str] = Field(default_factory=list)
    worker_state: str | None = None  # active, draining, disabled, provisioning
    storage_state: str | None = None  # the log server's: read-write, read-only, disabled...
    metadata_server_state: str | None = None  # member, standby, provisioning


class ClusterProblem(ApiModel):
    """Something wrong in the cluster: what it is, where, and one line for a person."""

    kind: str  # node-dead, node-draining, storage-degraded, partition-leaderless,
    # partition-broken, partition-lagging, replica-lost, log-under-replicated, log-sequencer-dead,
    # leadership-frozen, placement-frozen
    subject: str  # node N1, partition 3, log 2
    detail: str


class ClusterReadout(ApiModel):
    """Beside the spec's five components, only when RESTATE_NODE_URLS is set: the cluster's
    health as Restate's own cluster tables show it (read with ``restatectl`` through the first
    node that answers)."""

    status: ComponentStatus
    kind: Literal["single-node", "cluster"] | None = None
    source: str | None = None  # the node URL read from (shown form)
    nodes: list[ClusterNode] = Field(default_factory=list)
    partitions: int | None = None
    logs: int | None = None
    problems: list[ClusterProblem] = Field(default_factory=list)
    error: str | None = None


class DoctorReadout(ApiModel):
    ingress: IngressReadout
    admin: AdminReadout
    deployments: DeploymentsReadout
    services: ServicesReadout
    invocations: InvocationsReadout
    cluster: ClusterReadout | None = Field(default=None, exclude_if=_absent)

    def components(self) -> list[tuple[str, Any]]:
        """(name, readout) of each component read: the spec's five, and the cluster if read."""
        return [(name, part) for name, part in self if part is not None]


class AlertContext(BaseModel):
    """The alert that started a doctor run (and, through its findings, the runbook runs it led
    to): what a person needs to see in the run and the record. Redacted when it was received."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    alertname: str = Field(default="", max_length=255, description="The alert's name.")
    summary: str = Field(default="", max_length=2000, description="Its summary annotation.")
    labels: dict[str, str] = Field(default_factory=dict, description="Its labels.")
    startsAt: str = Field(default="", max_length=64)  # noqa: N815 - Alertmanager's name
    fingerprint: str = Field(default="", max_length=128)
    eventId: str = Field(default="", max_length=64, description="The Prefect event it became.")  # noqa: N815

    def line(self) -> str:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return f"alert {self.alertname or self.fingerprint}: {self.summary or '(no summary)'}" + (
            f" [{labels}]" if labels else ""
        )


class DoctorAnswer(BaseModel):
    """A doctor outcome the operator API or the CLI has already answered with: the readout, or
    the error body of an unusable admin URL. It is recorded as it is (the ``restate-doctor``
    run's parameter), not probed again; its readout is redacted, since Prefect stores it."""

    model_config = ConfigDict(frozen=True)

    readout: DoctorReadout | None = None
    error: dict[str, Any] | None = None
    source: str = Field(description="Where the answer was given (operator API, CLI).")
    actor: str = Field(description="Who asked.")
    request_id: str | None = None
    also_answered: list[str] = Field(
        default_factory=list,
        description="The others this record's readouts answered: 'actor (request id)' each.",
    )
    readouts: int = Field(
        default=1,
        ge=1,
        description="How many readouts with the same component statuses and findings this "
        "record stands for (read one after another while an earlier record was being made); "
        "it shows the last.",
    )
    first_read_at: datetime | None = Field(default=None, description="When the first was read.")
    last_read_at: datetime | None = Field(default=None, description="When the last was read.")

    def unwrap(self) -> DoctorReadout:
        """The readout, or raise the error it was answered with."""
        from restate_recovery.errors import error_from_body

        if self.error is not None:
            raise error_from_body(self.error)
        if self.readout is None:
            raise ValueError("a doctor answer holds a readout or an error")
        return self.readout


# --- what the Restate admin API answers (only the fields the runbooks use) ----------------------


class AdminModel(BaseModel):
    """A Restate admin API payload: unknown fields (e.g. clear-text additional_headers) are dropped."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class ServiceRevision(AdminModel):
    name: str
    revision: int | None = None


class Deployment(AdminModel):
    id: str
    uri: str | None = None
    arn: str | None = None
    created_at: str | None = None
    http_version: str | None = None  # "HTTP/1.1" for a deployment registered with use_http_11
    services: list[ServiceRevision] = Field(default_factory=list)

    @property
    def service_url(self) -> str:
        return self.uri or self.arn or ""


class DeploymentList(AdminModel):
    deployments: list[Deployment]


class RegisteredDeployment(AdminModel):
    id: str
    services: list[dict[str, Any]] = Field(default_factory=list)


class Handler(AdminModel):
    name: str
    ty: str | None = None


class ServiceInfo(AdminModel):
    name: str
    ty: str | None = None
    revision: int | None = None
    deployment_id: str | None = None
    handlers: list[Handler] = Field(default_factory=list)


class ServiceList(AdminModel):
    services: list[ServiceInfo]


class VersionInfo(AdminModel):
    version: str
    features: dict[str, Any] = Field(default_factory=dict)  # e.g. {"vqueues": false} on 1.7

    def drops_follower_state_writes(self) -> bool:
        """restatedev/restate#5416: before 1.8.0, with vqueues on, followers skip admin state
        writes (reproduced on a 1.7.12 cluster with ``experimental-enable-vqueues``)."""
        parts = [int(p) if p.isdigit() else 0 for p in self.version.split("-")[0].split(".")[:2]]
        return bool(self.features.get("vqueues")) and tuple(parts) < (1, 8)


class QueryResult(AdminModel):
    rows: list[dict[str, Any]]
