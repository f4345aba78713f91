"""One exception tree, split by what the caller does next.

    RecoveryError                      anything this package raises on purpose
    ├── RestateError                   raised by the admin client, translated once at its boundary
    │   ├── RestateUnreachable         no usable answer: connection refused/reset, timeout (retryable)
    │   └── RestateRejected            an HTTP answer with an error status (status, message, restate_code)
    │       └── RestateBadResponse     a success status with a body we cannot read
    └── OperatorError                  the route's own error, with the spec's code
        ├── AdminUnreachableError      RESTATE_ADMIN_UNREACHABLE      (HTTP 503)
        ├── DeploymentNotFoundError    RESTATE_DEPLOYMENT_NOT_FOUND   (HTTP 404)
        ├── InvocationNotFoundError    RESTATE_INVOCATION_NOT_FOUND   (HTTP 404)
        ├── QueryFailedError           RESTATE_QUERY_FAILED           (HTTP 502, Restate refused a read)
        ├── RetryBlockedError          RESTATE_WORKFLOW_RETRY_BLOCKED (HTTP 409, reason + invocation ids)
        ├── RecoveryInProgressError    RESTATE_RECOVERY_IN_PROGRESS   (HTTP 409, target busy)
        ├── TimerPendingError          RESTATE_WORKFLOW_TIMER_PENDING (HTTP 409, a killed run's timer)
        ├── StateWriteUnsafeError      RESTATE_STATE_WRITE_UNSAFE     (HTTP 409, vqueues before 1.8)
        ├── InvalidRequestError        INVALID_REQUEST                (HTTP 400, field errors)
        ├── ApprovalRejectedError      RESTATE_RECOVERY_REJECTED      (HTTP 409, not approved)
        ├── PlanPendingError           RESTATE_RECOVERY_PLAN_PENDING  (409, a plan already waits)
        ├── PlanChangedError           RESTATE_RECOVERY_PLAN_CHANGED  (409, not the approved plan)
        ├── UnauthenticatedError       UNAUTHENTICATED                (HTTP 401, no live API key)
        ├── ForbiddenError             FORBIDDEN                      (HTTP 403, no system:operate)
        ├── PrefectUnavailableError    PREFECT_UNAVAILABLE            (HTTP 503, Prefect down)
        ├── AuditUnavailableError      AUDIT_DATABASE_UNAVAILABLE     (HTTP 503, audit database down)
        └── CodedError                 any other code (an error body read back, e.g. recorded)

Every message is redacted on the way in (URL credentials become ``REDACTED``): exceptions end up in
Prefect's database (failed states, logged tracebacks), the audit table and logs.
Every class rebuilds from ``cls(*self.args)`` so that it survives pickling (Prefect stores the
exception of a failed state).
"""

from __future__ import annotations

from typing import Any, Literal

from restate_recovery.redaction import redact_text

ADMIN_UNREACHABLE = "RESTATE_ADMIN_UNREACHABLE"
DEPLOYMENT_NOT_FOUND = "RESTATE_DEPLOYMENT_NOT_FOUND"
RETRY_BLOCKED = "RESTATE_WORKFLOW_RETRY_BLOCKED"

BlockedReason = Literal["active-invocation", "already-succeeded", "purge-failed", "query-failed"]


class RecoveryError(Exception):
    """Base of every error this package raises on purpose."""


class RestateError(RecoveryError):
    """A call to the Restate admin API (or ingress) did not succeed."""

    def __init__(self, message: str, method: str = "", path: str = "") -> None:
        message = redact_text(message)
        super().__init__(message, method, path)
        self.message = message
        self.method = method
        self.path = path

    def __str__(self) -> str:
        where = f"{self.method} {self.path}: " if self.path else ""
        return f"{where}{self.message}"


class RestateUnreachable(RestateError):
    """Transport failure: the request got no usable HTTP answer. Safe to retry a read."""


class RestateRejected(RestateError):
    """Restate answered with an error status."""

    def __init__(
        self,
        message: str,
        method: str = "",
        path: str = "",
        status_code: int = 0,
        restate_code: str | None = None,
    ) -> None:
        message = redact_text(message)
        Exception.__init__(self, message, method, path, status_code, restate_code)
        self.message = message
        self.method = method
        self.path = path
        self.status_code = status_code
        self.restate_code = restate_code

    def __str__(self) -> str:
        code = f" {self.restate_code}" if self.restate_code else ""
        return f"{self.method} {self.path} -> {self.status_code}{code}: {self.message}"


class RestateBadResponse(RestateRejected):
    """Restate answered with a success status but a body of the wrong shape."""


class OperatorError(RecoveryError):
    """An error of the operator routes: ``code``, ``message`` and optional ``data``.

    The message is redacted on the way in (URL credentials become ``REDACTED``): it is stored by
    Prefect (failed state), in the audit table and in logs, and may quote Restate's own messages.
    """

    code: str = ""
    http_status: int = 500

    def __init__(self, message: str) -> None:
        message = redact_text(message)
        super().__init__(message)
        self.message = message

    @property
    def data(self) -> dict[str, Any] | None:
        return None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            body["data"] = self.data
        return body

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class AdminUnreachableError(OperatorError):
    code = ADMIN_UNREACHABLE
    http_status = 503


class DeploymentNotFoundError(OperatorError):
    code = DEPLOYMENT_NOT_FOUND
    http_status = 404


class InvocationNotFoundError(OperatorError):
    code = "RESTATE_INVOCATION_NOT_FOUND"
    http_status = 404


class QueryFailedError(OperatorError):
    """Restate answered a read (a query, a listing) with an error: nothing was written."""

    code = "RESTATE_QUERY_FAILED"
    http_status = 502


class RetryBlockedError(OperatorError):
    code = RETRY_BLOCKED
    http_status = 409

    def __init__(
        self, message: str, reason: BlockedReason, invocation_ids: list[str] | None = None
    ) -> None:
        message = redact_text(message)
        Exception.__init__(self, message, reason, invocation_ids)
        self.message = message
        self.reason: BlockedReason = reason
        self.invocation_ids = list(invocation_ids or [])

    @property
    def data(self) -> dict[str, Any]:
        return {"reason": self.reason, "invocationIds": self.invocation_ids}


class RecoveryInProgressError(OperatorError):
    """Another write runbook holds the same target and did not finish within the lock timeout."""

    code = "RESTATE_RECOVERY_IN_PROGRESS"
    http_status = 409


class TimerPendingError(OperatorError):
    """A killed run still has a timer due: purged now, its key's next run would be woken by it
    (restatedev/restate#5425, in Restate before 1.8.0). Nothing was written; retry after it."""

    code = "RESTATE_WORKFLOW_TIMER_PENDING"
    http_status = 409


class StateWriteUnsafeError(OperatorError):
    """Restate would not apply a state write on every replica: a server before 1.8.0 with its
    experimental vqueues on drops admin state writes on followers (restatedev/restate#5416), so
    a cleared state may come back after a leader change. Nothing was written."""

    code = "RESTATE_STATE_WRITE_UNSAFE"
    http_status = 409


class InvalidRequestError(OperatorError):
    """The request failed validation; nothing was touched. ``errors``: [{field, message}]."""

    code = "INVALID_REQUEST"
    http_status = 400

    def __init__(self, message: str, errors: list[dict[str, str]] | None = None) -> None:
        message = redact_text(message)
        Exception.__init__(self, message, errors)
        self.message = message
        self.errors = list(errors or [])

    @property
    def data(self) -> dict[str, Any]:
        return {"errors": self.errors}


class ApprovalRejectedError(OperatorError):
    """An operator rejected the write in the Prefect UI, or the approval timed out."""

    code = "RESTATE_RECOVERY_REJECTED"
    http_status = 409


class PlanPendingError(OperatorError):
    """An approval-gated run found another plan for its target waiting (or the target quiet
    after a rejection): it ends without pausing beside it."""

    code = "RESTATE_RECOVERY_PLAN_PENDING"
    http_status = 409


class PlanChangedError(OperatorError):
    """What the write would do now is not the plan that was approved (or planned a moment ago):
    nothing more was written; run again to plan anew."""

    code = "RESTATE_RECOVERY_PLAN_CHANGED"
    http_status = 409


class UnauthenticatedError(OperatorError):
    """No API key, or one that is unknown or revoked."""

    code = "UNAUTHENTICATED"
    http_status = 401


class ForbiddenError(OperatorError):
    """The API key is live but lacks ``system:operate``."""

    code = "FORBIDDEN"
    http_status = 403


class PrefectUnavailableError(OperatorError):
    """Prefect's server did not answer, or refused what it was sent."""

    code = "PREFECT_UNAVAILABLE"
    http_status = 503


class AuditUnavailableError(OperatorError):
    """The audit database (which also holds the API keys and the locks) did not answer."""

    code = "AUDIT_DATABASE_UNAVAILABLE"
    http_status = 503


class CodedError(OperatorError):
    """An error body read back (``code`` and ``message``) whose code has no class of its own."""

    def __init__(self, message: str, code: str = "INTERNAL_ERROR", http_status: int = 500) -> None:
        message = redact_text(message)
        Exception.__init__(self, message, code, http_status)
        self.message = message
        self.code = code
        self.http_status = http_status


_SIMPLE: dict[str, type[OperatorError]] = {
    cls.code: cls
    for cls in (
        AdminUnreachableError,
        DeploymentNotFoundError,
        RecoveryInProgressError,
        ApprovalRejectedError,
        PlanPendingError,
        UnauthenticatedError,
        ForbiddenError,
        PrefectUnavailableError,
        AuditUnavailableError,
    )
}


def error_from_body(body: dict[str, Any]) -> OperatorError:
    """The error an error body describes (as far as the body says)."""
    code, message = str(body.get("code", "")), str(body.get("message", ""))
    if code in _SIMPLE:
        return _SIMPLE[code](message)
    return CodedError(message, code or "INTERNAL_ERROR")


def error_body(error: BaseException) -> dict[str, Any]:
    """What an answer (and the audit row) says of a failure: the route's error body, or an
    ``INTERNAL_ERROR`` naming only the exception's type (never a stack trace)."""
    if isinstance(error, OperatorError):
        return error.body()
    return {"code": "INTERNAL_ERROR", "message": f"unexpected {type(error).__name__}"}
