"""Plain-function tests: timestamps, serialization, SQL quoting, exceptions (no server needed)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from restate_recovery.doctor.probes import (
    UnexpectedRows,
    count_by_status,
    failures_from_rows,
    paused_error_messages,
)
from restate_recovery.errors import (
    AdminUnreachableError,
    DeploymentNotFoundError,
    RestateBadResponse,
    RestateRejected,
    RestateUnreachable,
    RetryBlockedError,
)
from restate_recovery.models import ServiceItem, iso_utc
from restate_recovery.sql import invocation_id_literal, literal, name_literal


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-25T18:33:37.714000000Z", "2026-11-25T18:33:37.714Z"),
        ("2026-11-25T18:33:42.745Z", "2026-11-25T18:33:42.745Z"),
        ("2026-11-25T18:33:42Z", "2026-11-25T18:33:42.000Z"),
        ("2026-11-25T20:33:42.123456789+02:00", "2026-11-25T18:33:42.123Z"),
        ("2026-11-25T18:33:42.5", "2026-11-25T18:33:42.500Z"),
        (None, None),
        ("", None),
    ],
)
def test_timestamps_are_iso_utc_with_z(raw: str | None, expected: str | None) -> None:
    assert iso_utc(raw) == expected


def test_service_revision_is_omitted_when_unknown() -> None:
    assert ServiceItem(name="A", revision=3).to_json() == {"name": "A", "revision": 3}
    assert ServiceItem(name="A").to_json() == {"name": "A"}


def test_sql_literals_double_quotes_and_refuse_control_characters() -> None:
    assert literal("it's") == "'it''s'"
    assert literal("a'; DROP TABLE x; --") == "'a''; DROP TABLE x; --'"
    with pytest.raises(ValueError):
        literal("a\nb")
    assert name_literal("invitation_01-x") == "'invitation_01-x'"
    for bad in ["a'b", "a b", "", "ä", "a/b"]:
        with pytest.raises(ValueError):
            name_literal(bad)
    with pytest.raises(ValueError):
        invocation_id_literal("inv_1' OR '1'='1")


@pytest.mark.parametrize(
    "error",
    [
        RestateUnreachable("ConnectError: refused", "GET", "/health"),
        RestateRejected("boom", "POST", "/deployments", 500, "META0003"),
        RestateBadResponse("bad", "GET", "/version", 200),
        AdminUnreachableError("RESTATE_ADMIN_URL is not set"),
        DeploymentNotFoundError("no deployment has URL http://x/"),
        RetryBlockedError("blocked", "active-invocation", ["inv_1abc"]),
    ],
)
def test_errors_survive_pickling(error: Exception) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.__dict__ == error.__dict__


def test_operator_error_bodies_carry_the_spec_codes() -> None:
    assert AdminUnreachableError("x").body() == {
        "code": "RESTATE_ADMIN_UNREACHABLE",
        "message": "x",
    }
    assert RetryBlockedError("m", "already-succeeded", ["inv_1"]).body() == {
        "code": "RESTATE_WORKFLOW_RETRY_BLOCKED",
        "message": "m",
        "data": {"reason": "already-succeeded", "invocationIds": ["inv_1"]},
    }
    assert DeploymentNotFoundError("m").http_status == 404


def test_count_by_status_refuses_rows_of_the_wrong_shape() -> None:
    assert count_by_status([{"status": "running", "n": 2}, {"status": "completed", "n": 5}]) == {
        "completed": 5,
        "running": 2,
    }
    with pytest.raises(UnexpectedRows):
        count_by_status([{"status": "running"}])
    with pytest.raises(UnexpectedRows):
        count_by_status([{"status": "running", "n": "2"}])


def test_failures_take_their_message_and_time_from_the_right_columns() -> None:
    rows = [
        {
            "id": "inv_1a",
            "target_service_name": "W",
            "target_service_key": "k1",
            "status": "completed",
            "completion_failure": "[500] terminal",
            "modified_at": "2026-01-01T00:00:01.000Z",
            "completed_at": "2026-01-01T00:00:01.000Z",
        },
        {
            "id": "inv_1b",
            "target_service_name": "W",
            "target_service_key": "k2",
            "status": "backing-off",
            "last_failure": "[500 Internal] first line\nTraceback ...",
            "modified_at": "2026-01-01T00:00:03.000Z",
        },
        {
            "id": "inv_1c",
            "target_service_name": "S",
            "status": "paused",
            "modified_at": "2026-01-01T00:00:02.000Z",
        },
    ]
    failures = failures_from_rows(rows, {"inv_1c": "paused because"})
    assert [f.id for f in failures] == ["inv_1b", "inv_1c", "inv_1a"]
    assert failures[0].error_message == "[500 Internal] first line"
    assert failures[1].error_message == "paused because"
    assert failures[1].service_key is None
    assert failures[2].error_message == "[500] terminal"
    assert failures[2].to_json()["failedAt"] == "2026-01-01T00:00:01.000Z"


def test_paused_error_messages_keep_the_latest_event() -> None:
    rows = [
        {
            "id": "inv_1",
            "appended_at": "2026-01-01T00:00:01.000Z",
            "event_json": '{"ty":"Paused","last_failure":{"error_message":"old"}}',
        },
        {
            "id": "inv_1",
            "appended_at": "2026-01-01T00:00:02.000Z",
            "event_json": '{"ty":"Paused","last_failure":{"error_message":"new"}}',
        },
        {"id": "inv_2", "appended_at": "x", "event_json": "not json"},
    ]
    assert paused_error_messages(rows) == {"inv_1": "new"}


def test_doctor_findings_name_what_they_found() -> None:
    from restate_recovery.doctor.findings import doctor_findings
    from restate_recovery.models import (
        AdminReadout,
        DeploymentItem,
        DeploymentsReadout,
        DoctorReadout,
        IngressReadout,
        InvocationFailure,
        InvocationsReadout,
        ServicesReadout,
    )

    def failure(key: str, status: str) -> InvocationFailure:
        return InvocationFailure(
            id=f"inv_{key}",
            service_name="W",
            service_key=key,
            failed_at=None,
            error_message="at http://u:pw@h/",
            status=status,
        )

    readout = DoctorReadout(
        ingress=IngressReadout(status="unreachable"),
        admin=AdminReadout(status="ok"),
        deployments=DeploymentsReadout(
            status="ok",
            items=[
                DeploymentItem(id="dp_1", service_url="http://old:9080/"),
                DeploymentItem(id="dp_2", service_url="http://new:9080/"),
            ],
        ),
        services=ServicesReadout(status="ok"),
        invocations=InvocationsReadout(
            status="ok",
            recent_failures=[failure("k1", "completed"), failure("k2", "backing-off")],
        ),
    )

    found = {f.event: f for f in doctor_findings(readout, "http://u:pw@live:9080")}

    assert set(found) == {
        "restate.doctor.component.unhealthy",
        "restate.doctor.workflow.terminal-failed",
        "restate.doctor.service-url.unregistered",
        "restate.doctor.deployments.multiple",
    }
    assert found["restate.doctor.component.unhealthy"].resource["prefect.resource.id"] == (
        "restate.component.ingress"
    )
    terminal = found["restate.doctor.workflow.terminal-failed"]
    assert terminal.resource["prefect.resource.id"] == "restate.workflow.W.k1"  # not k2
    assert "pw" not in str(terminal.payload)
    assert terminal.runbook == "recover-stuck-workflow"
    assert terminal.payload["request"] == {"serviceName": "W", "serviceKey": "k1"}
    unregistered = found["restate.doctor.service-url.unregistered"]
    assert unregistered.runbook == "force-redeploy"
    assert unregistered.payload["request"] == {
        "serviceUrl": "http://REDACTED@live:9080",
        "force": True,
    }
    assert unregistered.target == "deployments"
    assert unregistered.state == "new" and unregistered.payload["state"] == "new"
    assert "pw" not in str(unregistered.payload)
    assert terminal.target == "workflow:W:k1"
    assert terminal.payload["reason"] == "doctor: W/k1 failed terminally (at http://REDACTED@h/)"
    again = {f.event: f for f in doctor_findings(readout, "http://u:pw@live:9080")}
    assert (
        again["restate.doctor.workflow.terminal-failed"].payload["fingerprint"]
        == (
            terminal.payload["fingerprint"]  # the same finding: the same fingerprint
        )
    )
    assert found["restate.doctor.component.unhealthy"].runbook is None
    nothing_to_keep = found["restate.doctor.deployments.multiple"]
    assert nothing_to_keep.payload["keepServiceUrl"] is None and nothing_to_keep.runbook is None
    registered = doctor_findings(readout, "http://new:9080")
    assert "restate.doctor.service-url.unregistered" not in {f.event for f in registered}
    multiple = next(f for f in registered if f.event == "restate.doctor.deployments.multiple")
    assert multiple.payload["keepServiceUrl"] == "http://new:9080/"
    assert multiple.runbook == "cleanup-stale-deployments"
    assert multiple.payload["request"] == {"serviceUrl": "http://new:9080/", "forceDrain": False}


def test_alert_events_are_deterministic_per_alert() -> None:
    from restate_recovery.alerts import AlertmanagerWebhook, alert_events

    body = {
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "A"},
                "startsAt": "t1",
                "fingerprint": "f1",
            },
            {
                "status": "resolved",
                "labels": {"alertname": "A"},
                "startsAt": "t1",
                "fingerprint": "f1",
            },
        ],
    }
    first = alert_events(AlertmanagerWebhook.model_validate(body))
    again = alert_events(AlertmanagerWebhook.model_validate(body))
    assert [e.id for e in first] == [e.id for e in again]
    assert first[0].id != first[1].id
    assert [e.event for e in first] == ["restate.alert.firing", "restate.alert.resolved"]
    assert first[0].resource.id == "alertmanager.alert.f1"


async def test_an_unexpected_error_is_answered_by_the_app_not_left_to_the_server() -> None:
    """Starlette's own error middleware answers and then re-raises; uvicorn then closes the
    connection under the client's next request (seen in the load run as a ReadError)."""
    import httpx

    from restate_recovery.api.main import create_app

    app = create_app()

    async def boom() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/boom", boom, methods=["POST"])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        response = await http.post("/boom", headers={"X-Request-Id": "boom-1"})
    assert response.status_code == 500
    assert response.json() == {
        "code": "INTERNAL_ERROR",
        "message": "unexpected RuntimeError",
        "requestId": "boom-1",
    }
    assert response.headers["x-request-id"] == "boom-1"


def configure_in_a_new_process(home: Path, cwd: Path, **env: str) -> tuple[bool, str]:
    """``prefect_env.configure()`` in a process of its own (Prefect reads its settings once per
    process): (whether a server is configured, what it wrote on stderr)."""
    import os
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    environ.update({"PREFECT_HOME": str(home), **env})
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from restate_recovery import prefect_env as p; print(p.configure())",
        ],
        env=environ,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout.strip() == "True", result.stderr


@pytest.mark.parametrize(
    ("where", "text"),
    [
        (
            "profiles.toml",
            'active = "ops"\n[profiles.ops]\nPREFECT_API_URL = "http://p:4200/api"\n',
        ),
        (".env", "PREFECT_API_URL=http://p:4200/api\n"),
        ("prefect.toml", "[api]\nurl = 'http://p:4200/api'\n"),
        ("pyproject.toml", "[tool.prefect.api]\nurl = 'http://p:4200/api'\n"),
    ],
)
def test_a_server_url_anywhere_prefect_reads_it_counts_as_configured(
    tmp_path: Path, where: str, text: str
) -> None:
    """Prefect's own settings decide: a server URL in its active profile (where
    ``prefect config set`` writes), a .env, prefect.toml or [tool.prefect] counts; then there is
    no note about a temporary server and no embedded database is seeded."""
    bare, home, cwd = tmp_path / "bare", tmp_path / "home", tmp_path / "cwd"
    for folder in (bare, home, cwd):
        folder.mkdir()
    configured, stderr = configure_in_a_new_process(bare, cwd)
    assert not configured and "note: PREFECT_API_URL is not set" in stderr
    assert (bare / "prefect.db").exists()  # seeded from the pre-migrated template

    (home / where if where == "profiles.toml" else cwd / where).write_text(text)
    configured, stderr = configure_in_a_new_process(home, cwd)
    assert configured and "note:" not in stderr
    assert not (home / "prefect.db").exists()


def test_a_service_url_is_sealed_once_where_it_enters(settings_env: pytest.MonkeyPatch) -> None:
    """Kept intact in the model (Restate needs the credentials), redacted in every serialization
    and repr (what Prefect, the audit table and logs keep); a redacted URL is unsealed with the
    configured RESTATE_SERVICE_URL, and refused when nothing here holds its credentials."""
    from pydantic import ValidationError

    from restate_recovery.schemas import CleanupStaleDeploymentsRequest, ForceRedeployRequest

    settings_env.setenv("RESTATE_SERVICE_URL", "http://ops:pw1@live:9080")
    given = ForceRedeployRequest.model_validate({"serviceUrl": "http://ops:pw2@other:9080/v1"})

    assert given.service_url == "http://ops:pw2@other:9080/v1"
    assert given.to_json() == {"serviceUrl": "http://REDACTED@other:9080/v1", "force": True}
    assert "pw2" not in repr(given) and "pw2" not in str(given) and "pw2" not in given.target
    from fastapi.encoders import jsonable_encoder  # what Prefect stores as a run's parameters

    assert "pw2" not in str(jsonable_encoder({"request": given}))

    for redacted, real in [
        ("http://REDACTED@live:9080", "http://ops:pw1@live:9080"),
        ("http://REDACTED@live:9080/", "http://ops:pw1@live:9080/"),  # as Restate stores it
    ]:
        unsealed = CleanupStaleDeploymentsRequest.model_validate({"serviceUrl": redacted})
        assert unsealed.service_url == real
    with pytest.raises(ValidationError, match="credentials are not available"):
        ForceRedeployRequest.model_validate({"serviceUrl": "http://REDACTED@elsewhere:9080"})


def test_the_doctor_artifact_says_what_an_operator_needs() -> None:
    """The markdown artifact names every component with its status, the registered deployments,
    each failed key with its error, and never a credential."""
    from restate_recovery.doctor.render import readout_markdown
    from restate_recovery.models import (
        AdminReadout,
        DeploymentItem,
        DeploymentsReadout,
        DoctorReadout,
        IngressReadout,
        InvocationFailure,
        InvocationsReadout,
        ServiceItem,
        ServicesReadout,
    )

    readout = DoctorReadout(
        ingress=IngressReadout(status="unreachable"),
        admin=AdminReadout(status="ok", latency_ms=4.5, version="1.7.12"),
        deployments=DeploymentsReadout(
            status="ok",
            items=[DeploymentItem(id="dp_1", service_url="http://u:pw@svc:9080/", created_at="t")],
        ),
        services=ServicesReadout(status="degraded", error="GET /services -> 503"),
        invocations=InvocationsReadout(
            status="ok",
            by_status={"completed": 3, "paused": 1},
            recent_failures=[
                InvocationFailure(
                    id="inv_1",
                    service_name="IdentityRecoveryWorkflow",
                    service_key="invitation_7",
                    failed_at="2026-12-01T08:00:00.000Z",
                    error_message="TerminalError: upstream | refused",
                    status="completed",
                )
            ],
        ),
    )
    markdown = readout_markdown(readout)

    for row in (
        "| ingress | unreachable |",
        "| admin | ok | 4.5 | version 1.7.12 |",
        "| deployments | ok | | 1 registered",
        "| services | degraded | | 0 registered GET /services -> 503 |",
        "| invocations | ok | | completed: 3, paused: 1",
        "| dp_1 | http://REDACTED@svc:9080/ | t |",
        "| inv_1 | IdentityRecoveryWorkflow | invitation_7 | completed | 2026-12-01T08:00:00.000Z "
        "| TerminalError: upstream \\| refused |",
    ):
        assert row in markdown, row
    assert "pw" not in markdown
    assert ServiceItem(name="x").revision is None  # an unknown revision is omitted, not 0


def test_a_resume_request_says_which_selection_is_missing_or_doubled() -> None:
    from pydantic import ValidationError

    from restate_recovery.schemas import ResumePausedInvocationsRequest

    with pytest.raises(
        ValidationError, match=r"give invocationId \(one invocation\) or serviceName"
    ):
        ResumePausedInvocationsRequest.model_validate({"deployment": "keep"})
    with pytest.raises(ValidationError, match="give invocationId or serviceName, not both"):
        ResumePausedInvocationsRequest.model_validate(
            {"invocationId": "inv_1" + "a" * 26, "serviceName": "FlakyWorkflow"}
        )


async def test_key_lookups_are_shared_only_while_one_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls with one key that come while its read runs share it; a read that has ended is never
    reused (a revocation is seen by the next call), and another key gets a read of its own."""
    import asyncio
    import threading

    from restate_recovery import store
    from restate_recovery.api import deps

    reads: list[str] = []
    release = threading.Event()

    def lookup(presented: str) -> store.KeyHolder | None:
        reads.append(presented)
        release.wait(timeout=10)
        return store.KeyHolder(actor_user_id=presented, role="ops", permissions=[])

    monkeypatch.setattr(deps, "_lookup_key", lookup)
    first = [asyncio.ensure_future(deps._holder_of("a")) for _ in range(5)]
    other = asyncio.ensure_future(deps._holder_of("b"))
    await asyncio.sleep(0.05)
    release.set()
    holders = await asyncio.gather(*first, other)
    assert sorted(reads) == ["a", "b"]
    assert [h.actor_user_id for h in holders if h] == ["a"] * 5 + ["b"]
    await deps._holder_of("a")
    assert reads.count("a") == 2 and not deps._LOOKUPS
