"""The CLI's remote mode: a client of the operator API (``DALP_API_URL``, ``DALP_API_KEY``).

It posts a route's body with ``X-Api-Key`` (and ``X-Operator-Reason``, ``X-Request-Id``) and
hands back what the API answered. The API authenticates the key and signs the audit row with the
key's actor: nothing here can say who is asking. Standard library only (``http.client``): an
operator's CLI call must start fast and needs neither Prefect, nor a database, nor Restate's URL.
"""

from __future__ import annotations

import http.client
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from restate_recovery.paths import route
from restate_recovery.redaction import redact_text

DEFAULT_TIMEOUT_SECONDS = 600.0  # a write may wait for the per-target lock, then drain
API_UNREACHABLE = "OPERATOR_API_UNREACHABLE"
BAD_RESPONSE = "OPERATOR_API_BAD_RESPONSE"


@dataclass(frozen=True)
class Answer:
    """What a route answered: its body (or an error body), and whether it is a success."""

    ok: bool
    body: dict[str, Any]
    request_id: str | None = None


class ConfigError(Exception):
    """The remote mode is half configured (``DALP_API_URL`` without ``DALP_API_KEY``, or a URL
    that is not http(s))."""


@dataclass(frozen=True)
class OperatorApiClient:
    base_url: str
    api_key: str
    timeout: float = DEFAULT_TIMEOUT_SECONDS

    @classmethod
    def from_environment(cls) -> OperatorApiClient:
        url, key = os.environ.get("DALP_API_URL", ""), os.environ.get("DALP_API_KEY", "")
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ConfigError(f"DALP_API_URL is not an absolute http(s) URL: {url!r}")
        if not key:
            raise ConfigError("DALP_API_URL is set but DALP_API_KEY is not")
        timeout = float(os.environ.get("DALP_API_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS))
        return cls(base_url=url, api_key=key, timeout=timeout)

    def post(
        self, name: str, body: dict[str, Any], *, reason: str | None, dry_run: bool = False
    ) -> Answer:
        """POST a route's body; the API's answer, or an error body of ours when there is none
        (each with the request id this call sent)."""
        request_id = f"cli_{uuid.uuid4().hex}"
        headers: dict[str, str | bytes] = {
            "X-Api-Key": self.api_key,
            "Content-Type": "application/json",
            "Accept": "application/json",
            "X-Request-Id": request_id,
        }
        if reason:  # UTF-8 bytes, as curl sends them; the API reads the header as UTF-8
            headers["X-Operator-Reason"] = reason.encode()
        base = urlsplit(self.base_url)
        path = base.path.rstrip("/") + route(name) + ("?dryRun=true" if dry_run else "")
        connection_class = (
            http.client.HTTPSConnection if base.scheme == "https" else http.client.HTTPConnection
        )
        connection = connection_class(base.hostname or "", base.port, timeout=self.timeout)
        try:
            connection.request("POST", path, body=json.dumps(body).encode(), headers=headers)
            response = connection.getresponse()
            content = response.read()
        except (OSError, http.client.HTTPException) as exc:
            return Answer(
                ok=False,
                body={
                    "code": API_UNREACHABLE,
                    "message": redact_text(
                        f"the operator API at {self.base_url} did not answer: "
                        f"{type(exc).__name__}: {exc}"
                    ),
                    "requestId": request_id,
                },
                request_id=request_id,
            )
        finally:
            connection.close()
        request_id = response.getheader("x-request-id") or request_id
        try:
            parsed = json.loads(content)
        except ValueError:
            parsed = None
        ok = 200 <= response.status < 300
        if not isinstance(parsed, dict) or (not ok and "code" not in parsed):
            return Answer(
                ok=False,
                body={
                    "code": BAD_RESPONSE,
                    "message": f"the operator API answered {response.status} with a body that "
                    "is not the documented JSON",
                    "requestId": request_id,
                },
                request_id=request_id,
            )
        return Answer(ok=ok, body=parsed, request_id=request_id)
