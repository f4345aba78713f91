"""Request bodies and responses of the write runbooks (the spec's shapes, camelCase on the wire).

Each request model doubles as the Prefect UI form (field descriptions and defaults) and as the
validation of the HTTP route and the CLI: invalid input is refused before anything is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from restate_recovery.errors import InvalidRequestError
from restate_recovery.models import ApiModel
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
    return value


class RequestModel(ApiModel):
    model_config = ConfigDict(
        alias_generator=ApiModel.model_config.get("alias_generator"),
        populate_by_name=True,
        frozen=True,
        extra="forbid",
        strict=True,
    )


class ForceRedeployRequest(RequestModel):
    service_url: str = Field(
        description="The live durable workflow service URL to register (absolute http/https).",
        max_length=2048,
    )
    force: bool = Field(
        default=True,
        description="Send a forced registration (always sent explicitly; Restate's own default "
        "is false).",
    )

    _check_url = field_validator("service_url")(absolute_http_url)


class CleanupStaleDeploymentsRequest(RequestModel):
    service_url: str = Field(
        description="The exact registered service URL of the deployment to keep (copy it from "
        "doctor's deployments.items[].serviceUrl).",
        max_length=2048,
    )
    force_drain: bool = Field(
        default=False,
        description="Kill work pinned to stale deployments instead of waiting for it to drain "
        "(for known-dead stale deployments).",
    )

    _check_url = field_validator("service_url")(absolute_http_url)


class RecoverStuckWorkflowRequest(RequestModel):
    service_name: str = Field(
        description="Workflow service name, e.g. IdentityRecoveryWorkflow.",
        pattern=NAME_PATTERN,
        max_length=255,
    )
    service_key: str = Field(
        description="The exact workflow key of the failed invocation.",
        pattern=NAME_PATTERN,
        max_length=255,
    )


RequestT = TypeVar("RequestT", bound=BaseModel)


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic errors as ``[{field, message}]`` (the input value is never echoed back)."""
    return [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]


def parse_request(model: type[RequestT], data: dict[str, Any]) -> RequestT:
    """Validate a request body; ``InvalidRequestError`` (400) with the field errors otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc)
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise InvalidRequestError(f"Invalid request: {summary}", errors) from exc


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
