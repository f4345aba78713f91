"""Answered doctor readouts recorded as restate-doctor flow runs over Prefect's REST API: what a
record holds (plain functions), how it talks to Prefect (faults through MockTransport), and the
run it leaves in the session's real Prefect server."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import ssl
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from restate_recovery import prefect_settings
from restate_recovery.demo.local_stack import PrefectServer
from restate_recovery.doctor import AnsweredReadout, readout_markdown
from restate_recovery.errors import AdminUnreachableError
from restate_recovery.models import (
    AdminReadout,
    DeploymentsReadout,
    DoctorReadout,
    IngressReadout,
    InvocationFailure,
    InvocationsReadout,
    ServicesReadout,
)
from restate_recovery.prefect_settings import ConnectionSettings
from restate_recovery.run_record import (
    PrefectConnection,
    RecordError,
    RunRecord,
    RunRecorder,
    connection,
    connection_from_settings,
    doctor_run_record,
)


def readout(*, failed_key: str | None = None, version: str = "1.7.12") -> DoctorReadout:
    failures = []
    if failed_key is not None:
        failures.append(
            InvocationFailure(
                id="inv_1",
                service_name="IdentityRecoveryWorkflow",
                service_key=failed_key,
                status="completed",
                failed_at="2026-11-27T10:00:00Z",
                error_message="boom",
            )
        )
    return DoctorReadout(
        ingress=IngressReadout(status="ok", latency_ms=1.0),
        admin=AdminReadout(status="ok", latency_ms=1.0, version=version),
        deployments=DeploymentsReadout(status="ok", items=[], error=None),
        services=ServicesReadout(status="ok", items=[], error=None),
        invocations=InvocationsReadout(
            status="ok", by_status={"completed": 1}, recent_failures=failures, error=None
        ),
    )


# --- what a record holds ------------------------------------------------------------------------


def test_a_readout_is_recorded_with_its_artifact_findings_and_verdict() -> None:
    answered = AnsweredReadout(readout(failed_key="k1"), None, "req-1")

    record = doctor_run_record(answered, source="operator API", actor="alice", service_url=None)

    assert record.tags == ["via:operator API"]
    assert record.artifact_markdown == readout_markdown(readout(failed_key="k1"))
    assert [f.event for f in record.findings] == ["restate.doctor.workflow.terminal-failed"]
    assert record.log_lines == [
        "readout answered through the operator API (actor alice, request req-1), "
        "recorded as answered",
        "event restate.doctor.workflow.terminal-failed for "
        "restate.workflow.IdentityRecoveryWorkflow.k1",
        "doctor: all ok",
    ]
    assert record.final_state == {"type": "COMPLETED", "name": "Completed"}


def test_an_answered_error_is_recorded_as_a_failed_run_without_artifact() -> None:
    error = AdminUnreachableError("RESTATE_ADMIN_URL is not set")

    record = doctor_run_record(
        AnsweredReadout(None, error, None), source="CLI", actor="bob", service_url=None
    )

    assert record.artifact_markdown is None and record.findings == []
    assert record.final_state == {
        "type": "FAILED",
        "name": "Failed",
        "message": "RESTATE_ADMIN_UNREACHABLE: RESTATE_ADMIN_URL is not set",
    }
    assert (
        record.log_lines[0] == "readout answered through the CLI (actor bob), recorded as answered"
    )


def test_the_connection_is_prefects_client_settings_from_the_environment(tmp_path: Path) -> None:
    home = {"PREFECT_HOME": str(tmp_path)}  # no profile, and nothing in the working directory

    def from_env(environ: dict[str, str]) -> PrefectConnection | None:
        return connection_from_settings(home | environ, cwd=tmp_path)

    assert from_env({}) is None

    plain = from_env({"PREFECT_API_URL": "http://p:4200/api"})
    assert plain is not None and (plain.api_url, plain.headers, plain.max_retries) == (
        "http://p:4200/api",
        {},
        5,
    )
    assert isinstance(plain.verify, ssl.SSLContext) and plain.verify.check_hostname

    both = from_env(
        {
            "PREFECT_API_URL": "https://p/api",
            "PREFECT_API_AUTH_STRING": "admin:pass",
            "PREFECT_API_KEY": "pnu_key",
            "PREFECT_API_TLS_INSECURE_SKIP_VERIFY": "true",
            "PREFECT_CLIENT_CUSTOM_HEADERS": '{"X-Tenant": "dalp"}',
            "PREFECT_CLIENT_MAX_RETRIES": "0",
            "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500, 504",
        }
    )
    assert both is not None and both.verify is False and both.max_retries == 0
    assert both.headers == {
        "X-Tenant": "dalp",
        "Authorization": "Basic " + base64.b64encode(b"admin:pass").decode(),
    }  # the auth string wins over the key, as in Prefect's client
    assert both.retry_statuses == {408, 429, 500, 502, 503, 504}

    keyed = from_env({"PREFECT_API_URL": "https://p/api", "PREFECT_API_KEY": "pnu_key"})
    assert keyed is not None and keyed.headers == {"Authorization": "Bearer pnu_key"}


URL_ONLY = {"PREFECT_API_URL": "https://p/api"}
PROFILES = """
active = "ops"
[profiles.ops]
PREFECT_API_URL = "https://ops/api"
PREFECT_API_KEY = "pnu_profile"
PREFECT_CLIENT_MAX_RETRIES = 2
PREFECT_CLIENT_RETRY_EXTRA_CODES = [500, 504]
PREFECT_CLIENT_CUSTOM_HEADERS = '{"X-Tenant": "dalp"}'
PREFECT_API_TLS_INSECURE_SKIP_VERIFY = true
[profiles.other]
PREFECT_API_URL = "https://other/api"
PREFECT_API_AUTH_STRING = "admin:other"
"""
# name: (environment, .env, profiles.toml in PREFECT_HOME or None, what happens), where what
# happens is "same" (read without Prefect, exactly as Prefect reads it), "prefect" (left to
# Prefect, which reads it), "refused" (left to Prefect, which refuses it) or "no server".
CONFIGURATIONS: dict[str, tuple[dict[str, str], str, str | None, str]] = {
    "URL in env, the rest in the active profile": (URL_ONLY, "", PROFILES, "same"),
    "everything in the profile": ({}, "", PROFILES, "same"),
    "another profile chosen": ({"PREFECT_PROFILE": "other"}, "", PROFILES, "same"),
    "env wins over profile": (URL_ONLY | {"PREFECT_API_KEY": "pnu_env"}, "", PROFILES, "same"),
    "empty env value wins too": (URL_ONLY | {"PREFECT_API_KEY": ""}, "", PROFILES, "same"),
    "empty env URL hides the profile's": ({"PREFECT_API_URL": ""}, "", PROFILES, "no server"),
    ".env wins over profile": (URL_ONLY, "export PREFECT_API_KEY='pnu_dotenv'\n", PROFILES, "same"),
    ".env alone": ({}, "PREFECT_API_URL=https://d/api\nPREFECT_API_KEY=pnu_d\n", None, "same"),
    ".env comment": (URL_ONLY, "PREFECT_API_KEY=pnu_d # prod\n", None, "same"),
    ".env ${VAR}": (URL_ONLY | {"OPS_KEY": "pnu_v"}, "PREFECT_API_KEY=${OPS_KEY}\n", None, "same"),
    ".env multi-line JSON": (
        URL_ONLY,
        'PREFECT_CLIENT_CUSTOM_HEADERS=\'{\n"X-T": "d"\n}\'\n',
        None,
        "same",
    ),
    "a lower-case name in .env": (URL_ONLY, "prefect_api_key=pnu_lower\n", PROFILES, "same"),
    ".env names the profiles file": (URL_ONLY, "PREFECT_PROFILES_PATH=ops.toml\n", None, "same"),
    "test mode reads no profile": (URL_ONLY | {"PREFECT_TEST_MODE": "1"}, "", PROFILES, "same"),
    "a broken profiles file": (URL_ONLY, "", "not toml [", "same"),
    "only the environment": (
        URL_ONLY | {"PREFECT_CLIENT_RETRY_EXTRA_CODES": "500, 504", "PREFECT_API_KEY": "k"},
        "",
        None,
        "same",
    ),
    "a custom Authorization wins, a custom User-Agent is dropped": (
        URL_ONLY
        | {
            "PREFECT_API_KEY": "pnu_k",
            "PREFECT_CLIENT_CUSTOM_HEADERS": '{"authorization": "Bearer gw", "User-Agent": "x"}',
        },
        "",
        None,
        "same",
    ),
    "a lower-case name in env": (URL_ONLY | {"prefect_api_key": "k"}, "", None, "prefect"),
    "a float in the profile": (
        {},
        "",
        'active = "a"\n[profiles.a]\nPREFECT_API_URL = "https://a/api"\n'
        "PREFECT_CLIENT_MAX_RETRIES = 3.0\n",
        "prefect",
    ),
    "retry codes with a space": (
        URL_ONLY | {"PREFECT_CLIENT_RETRY_EXTRA_CODES": "500 504"},
        "",
        None,
        "refused",
    ),
    "retry codes out of range": (
        URL_ONLY | {"PREFECT_CLIENT_RETRY_EXTRA_CODES": "600"},
        "",
        None,
        "refused",
    ),
    "skip-verify not a boolean": (
        URL_ONLY | {"PREFECT_API_TLS_INSECURE_SKIP_VERIFY": " TRUE "},
        "",
        None,
        "refused",
    ),
    "a whole section as JSON": (
        URL_ONLY | {"PREFECT_API": '{"url": "https://j/api"}'},
        "",
        None,
        "prefect",
    ),
    "a name without a value in .env": ({}, "PREFECT_API_URL\n", PROFILES, "same"),
    "an empty profile name": ({"PREFECT_PROFILE": ""}, "", PROFILES, "same"),
}


def described(found: PrefectConnection | None) -> tuple[Any, ...] | None:
    if found is None:
        return None
    verify = found.verify if isinstance(found.verify, bool) else found.verify.get_ca_certs()
    return (found.api_url, dict(found.headers), verify, found.max_retries, found.retry_statuses)


@pytest.mark.parametrize("name", list(CONFIGURATIONS))
def test_the_settings_read_without_prefect_are_the_ones_prefect_reads(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Differential: the fast path (no Prefect import) against ``prefect.settings.Settings()``
    built from the same environment, working directory and profiles file."""
    from prefect.settings import Settings

    environ, dotenv, profiles, expected = CONFIGURATIONS[name]
    home = tmp_path / "home"
    home.mkdir()
    if profiles is not None:
        (home / "profiles.toml").write_text(profiles)
    (tmp_path / "ops.toml").write_text(PROFILES)
    if dotenv:
        (tmp_path / ".env").write_text(dotenv)
    environ = environ | {"PREFECT_HOME": str(home)}
    if "SSL_CERT_FILE" in os.environ:
        environ["SSL_CERT_FILE"] = os.environ["SSL_CERT_FILE"]
    for variable in list(os.environ):
        if variable.upper().startswith("PREFECT_"):
            monkeypatch.delenv(variable)
    for variable, value in environ.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.chdir(tmp_path)

    ours = connection_from_settings(environ, cwd=tmp_path)

    with warnings.catch_warnings():  # Prefect warns about a broken profiles file, then ignores it
        warnings.simplefilter("ignore", UserWarning)
        if expected == "refused":
            with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
                Settings()
            assert ours is None
            return
        prefects = Settings()
    if expected == "no server":
        assert ours is None and not prefects.api.url
        return
    assert prefects.api.url
    if expected == "same":
        assert prefect_settings.read(environ, tmp_path) == ConnectionSettings.of(prefects)
        assert described(ours) == described(connection(ConnectionSettings.of(prefects)))
    else:
        assert ours is None


@pytest.mark.parametrize("pyproject", ["tool = 1\n", "not toml [\n", "[tool]\nprefect = 1\n"])
def test_a_pyproject_prefect_refuses_is_left_to_prefect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pyproject: str
) -> None:
    from prefect.settings import Settings

    (tmp_path / "pyproject.toml").write_text(pyproject)
    environ = URL_ONLY | {"PREFECT_HOME": str(tmp_path)}
    assert connection_from_settings(environ, cwd=tmp_path) is None
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT_API_URL", URL_ONLY["PREFECT_API_URL"])
    with pytest.raises((ValueError, TypeError, AttributeError)):
        Settings()


CLIENT_CASES = {
    "a key": ConnectionSettings("https://p/api", api_key="pnu_k"),
    "auth string over key": ConnectionSettings("https://p/api", auth_string="a:b", api_key="k"),
    "custom headers after auth": ConnectionSettings(
        "https://p/api",
        api_key="pnu_k",
        custom_headers={"authorization": "Bearer gw", "X-Tenant": "dalp", "User-Agent": "x"},
    ),
    "no TLS verification": ConnectionSettings("https://p/api", tls_insecure_skip_verify=True),
    "no CA file": ConnectionSettings("https://p/api", ssl_cert_file=None),
    "a CA file": ConnectionSettings(
        "https://p/api", ssl_cert_file="/etc/ssl/certs/ca-certificates.crt"
    ),
}


@pytest.mark.parametrize("name", list(CLIENT_CASES))
def test_the_connection_is_the_one_prefects_client_makes(name: str) -> None:
    """Headers and TLS of our client against ``PrefectClient``'s own, for the same settings."""
    from prefect.client.orchestration import PrefectClient
    from prefect.settings import (
        PREFECT_API_SSL_CERT_FILE,
        PREFECT_API_TLS_INSECURE_SKIP_VERIFY,
        PREFECT_CLIENT_CUSTOM_HEADERS,
        temporary_settings,
    )

    settings = CLIENT_CASES[name]
    updates = {
        PREFECT_API_TLS_INSECURE_SKIP_VERIFY: settings.tls_insecure_skip_verify,
        PREFECT_API_SSL_CERT_FILE: settings.ssl_cert_file or "",
        PREFECT_CLIENT_CUSTOM_HEADERS: dict(settings.custom_headers),
    }
    with warnings.catch_warnings(), temporary_settings(updates=updates):
        warnings.simplefilter("ignore")
        theirs: Any = PrefectClient(
            settings.api_url or "", auth_string=settings.auth_string, api_key=settings.api_key
        )._client
    ours: Any = connection(settings).client()

    for header in ("Authorization", "X-Tenant"):
        assert ours.headers.get(header) == theirs.headers.get(header)
    assert ours.headers.get("User-Agent") != "x"
    ours_tls, theirs_tls = ours._transport._pool._ssl_context, theirs._transport._pool._ssl_context
    assert (ours_tls.verify_mode, ours_tls.check_hostname) == (
        theirs_tls.verify_mode,
        theirs_tls.check_hostname,
    )
    if ours_tls.verify_mode != ssl.CERT_NONE:  # the CAs trusted, where they count
        assert ours_tls.get_ca_certs() == theirs_tls.get_ca_certs()


@pytest.mark.parametrize(
    ("where", "text"),
    [
        ("prefect.toml", "[api]\nkey = 'pnu_k'\n"),
        ("pyproject.toml", "[tool.prefect.api]\nkey = 'pnu_k'\n"),
    ],
)
def test_settings_only_prefect_can_read_are_left_to_prefect(
    tmp_path: Path, where: str, text: str
) -> None:
    environ = URL_ONLY | {"PREFECT_HOME": str(tmp_path)}
    assert connection_from_settings(environ, cwd=tmp_path) is not None
    (tmp_path / where).write_text(text)
    assert connection_from_settings(environ, cwd=tmp_path) is None


def test_a_lower_case_prefect_name_is_left_to_prefect(tmp_path: Path) -> None:
    """Prefect's environment names are case-insensitive: prefect_client_max_retries=2 counts."""
    environ = URL_ONLY | {"PREFECT_HOME": str(tmp_path), "prefect_client_max_retries": "2"}
    assert connection_from_settings(environ, cwd=tmp_path) is None


def test_a_cert_file_makes_a_verifying_context(tmp_path: Path) -> None:
    import certifi

    found = connection_from_settings(
        {
            "PREFECT_API_URL": "https://p/api",
            "PREFECT_API_SSL_CERT_FILE": certifi.where(),
            "PREFECT_HOME": str(tmp_path),
        },
        cwd=tmp_path,
    )
    assert found is not None and isinstance(found.verify, ssl.SSLContext)
    assert found.verify.verify_mode == ssl.CERT_REQUIRED


# --- how it talks to Prefect (faults) -----------------------------------------------------------


class FakePrefect:
    """Just enough of Prefect's API for the faults below; ``fail`` decides per request."""

    def __init__(self, fail: Callable[[httpx.Request, int], httpx.Response | None]) -> None:
        self.fail = fail
        self.calls: list[str] = []
        self.bodies: list[Any] = []  # every request's body, refused or not

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request.url.path)
        self.bodies.append(json.loads(request.content) if request.content else None)
        failed = self.fail(request, self.calls.count(request.url.path))
        if failed is not None:
            return failed
        path = request.url.path
        if path.endswith("/flows/"):
            return httpx.Response(200, json={"id": "flow-1"})
        if path.endswith("/flow_runs/"):
            return httpx.Response(201, json={"id": "run-1"})
        if path.endswith("/set_state"):
            return httpx.Response(201, json={"status": "ACCEPT"})
        if path.endswith("/events"):
            return httpx.Response(204)
        return httpx.Response(201, json={})


def recorder_on(fake: FakePrefect, api_url: str = "http://prefect.test/api") -> RunRecorder:
    return RunRecorder(PrefectConnection(api_url, transport=httpx.MockTransport(fake)))


def a_record() -> RunRecord:
    return doctor_run_record(
        AnsweredReadout(readout(failed_key="k2"), None, "r"),
        source="CLI",
        actor="a",
        service_url=None,
    )


async def test_a_busy_prefect_is_asked_again_and_the_run_is_created_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("restate_recovery.run_record.BACKOFF_BASE_SECONDS", 0.0)

    def busy_twice(request: httpx.Request, nth: int) -> httpx.Response | None:
        if request.url.path.endswith("/flow_runs/") and nth <= 2:
            return httpx.Response(503, json={"detail": "busy"})
        return None

    fake = FakePrefect(busy_twice)
    recorder = recorder_on(fake)
    assert await recorder.record(a_record()) == "run-1"
    await recorder.aclose()
    assert fake.calls.count("/api/flow_runs/") == 3
    creates = [
        b for path, b in zip(fake.calls, fake.bodies, strict=True) if path.endswith("/flow_runs/")
    ]
    keys = {create["idempotency_key"] for create in creates}
    assert len(keys) == 1  # the same key each time: Prefect answers a retried create with one run


async def test_a_server_error_is_not_retried_and_says_no_run_was_created(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("restate_recovery.run_record.BACKOFF_BASE_SECONDS", 0.0)

    def broken(request: httpx.Request, nth: int) -> httpx.Response | None:
        if request.url.path.endswith("/flow_runs/"):
            return httpx.Response(500, json={"detail": "boom"})
        return None

    fake = FakePrefect(broken)
    recorder = recorder_on(fake)
    with pytest.raises(RecordError, match="no flow run was created") as raised:
        await recorder.record(a_record())
    await recorder.aclose()
    assert raised.value.flow_run_id is None
    assert fake.calls.count("/api/flow_runs/") == 1


async def test_extra_retry_codes_from_prefects_settings_are_asked_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """PREFECT_CLIENT_RETRY_EXTRA_CODES="500": a 500 is retried as Prefect's client would."""
    monkeypatch.setattr("restate_recovery.run_record.BACKOFF_BASE_SECONDS", 0.0)

    def broken_once(request: httpx.Request, nth: int) -> httpx.Response | None:
        if request.url.path.endswith("/flow_runs/") and nth == 1:
            return httpx.Response(500, json={"detail": "boom"})
        return None

    fake = FakePrefect(broken_once)
    found = connection_from_settings(
        {
            "PREFECT_API_URL": "http://prefect.test/api",
            "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500",
            "PREFECT_HOME": str(tmp_path),
        },
        cwd=tmp_path,
    )
    assert found is not None
    recorder = RunRecorder(dataclasses.replace(found, transport=httpx.MockTransport(fake)))
    assert await recorder.record(a_record()) == "run-1"
    await recorder.aclose()
    assert fake.calls.count("/api/flow_runs/") == 2


async def test_credentials_in_prefects_url_never_reach_the_error() -> None:
    def broken(request: httpx.Request, nth: int) -> httpx.Response | None:
        return httpx.Response(500, json={"detail": "boom"})

    recorder = recorder_on(FakePrefect(broken), "http://ops:s3cret@prefect.test/api")
    with pytest.raises(RecordError) as raised:
        await recorder.record(a_record())
    await recorder.aclose()
    assert "s3cret" not in str(raised.value) and "prefect.test" in str(raised.value)


async def test_a_prefect_never_reached_fails_at_once_one_that_answered_before_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("restate_recovery.run_record.BACKOFF_BASE_SECONDS", 0.0)
    refusing = {"on": True}

    def refused(request: httpx.Request, nth: int) -> httpx.Response | None:
        if refusing["on"]:
            raise httpx.ConnectError("refused", request=request)
        return None

    fake = FakePrefect(refused)
    recorder = recorder_on(fake)
    with pytest.raises(RecordError, match="ConnectError"):
        await recorder.record(a_record())
    assert fake.calls == ["/api/flows/"]  # a wrong or down server: no waiting

    refusing["on"] = False
    assert await recorder.record(a_record()) == "run-1"
    refusing["on"] = True
    fake.calls.clear()
    with pytest.raises(RecordError):
        await recorder.record(a_record())
    await recorder.aclose()
    assert fake.calls == ["/api/flow_runs/"] * 6  # it answered before: a restart, 5 retries


async def test_a_server_with_csrf_protection_gets_its_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def wants_token(request: httpx.Request, nth: int) -> httpx.Response | None:
        if request.url.path.endswith("/csrf-token"):
            assert request.url.params["client"]
            return httpx.Response(200, json={"token": "t0k", "expiration": "2099-01-01T00:00:00Z"})
        if request.headers.get("Prefect-Csrf-Token") != "t0k":
            return httpx.Response(403, json={"detail": "Missing CSRF token."})
        return None

    fake = FakePrefect(wants_token)
    recorder = recorder_on(fake)
    assert await recorder.record(a_record()) == "run-1"
    await recorder.aclose()
    assert fake.calls.count("/api/csrf-token") == 1


async def test_a_record_cut_short_marks_its_run_crashed_and_names_it() -> None:
    def no_artifacts(request: httpx.Request, nth: int) -> httpx.Response | None:
        if request.url.path.endswith("/artifacts/"):
            return httpx.Response(500, json={"detail": "boom"})
        return None

    fake = FakePrefect(no_artifacts)
    recorder = recorder_on(fake)
    with pytest.raises(RecordError, match="run-1 was not fully recorded") as raised:
        await recorder.record(a_record())
    await recorder.aclose()
    assert raised.value.flow_run_id == "run-1"
    states = [
        (b["state"]["type"], b.get("force", False))
        for path, b in zip(fake.calls, fake.bodies, strict=True)
        if path.endswith("/set_state")
    ]
    assert states == [("COMPLETED", False), ("CRASHED", True)]  # the cut-short run is marked


# --- the run it leaves in a real Prefect server -------------------------------------------------


async def prefect_get(server: PrefectServer, path: str) -> Any:
    async with httpx.AsyncClient(base_url=server.api_url + "/", timeout=10) as http:
        response = await http.get(path)
        response.raise_for_status()
        return response.json()


async def prefect_filter(server: PrefectServer, path: str, body: Any) -> Any:
    async with httpx.AsyncClient(base_url=server.api_url + "/", timeout=10) as http:
        response = await http.post(path, json=body)
        response.raise_for_status()
        return response.json()


@pytest.mark.prefect
async def test_an_answered_readout_becomes_a_completed_restate_doctor_run(
    prefect_server: PrefectServer,
) -> None:
    answered = AnsweredReadout(readout(failed_key="k3", version="9.9.9-answered"), None, "rq")
    record = doctor_run_record(answered, source="operator API", actor="carol", service_url=None)
    recorder = RunRecorder()  # PREFECT_API_URL of the session's server, from the environment

    run_id = await recorder.record(record)
    await recorder.aclose()

    run = await prefect_get(prefect_server, f"flow_runs/{run_id}")
    flow = await prefect_get(prefect_server, f"flows/{run['flow_id']}")
    assert (flow["name"], run["name"], run["parameters"]) == ("restate-doctor",) * 2 + ({},)
    assert (run["state_type"], run["tags"]) == ("COMPLETED", ["via:operator API"])
    assert run["start_time"] is not None and run["end_time"] >= run["start_time"]
    (artifact,) = await prefect_filter(
        prefect_server, "artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}}
    )
    assert (artifact["key"], artifact["type"]) == ("restate-doctor", "markdown")
    assert artifact["data"] == readout_markdown(answered.unwrap())
    logs = await prefect_filter(
        prefect_server, "logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}}
    )
    assert [line["message"] for line in logs] == record.log_lines

    # the finding's event, related to the run, for the automations (Prefect stores it shortly)
    deadline = time.monotonic() + 20
    wanted = {"related": {"id": [f"prefect.flow-run.{run_id}"]}}
    while True:
        found = await prefect_filter(prefect_server, "events/filter", {"filter": wanted})
        events = [e for e in found["events"] if e["event"].startswith("restate.")]
        if events or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert [(e["event"], e["resource"]["prefect.resource.id"]) for e in events] == [
        ("restate.doctor.workflow.terminal-failed", "restate.workflow.IdentityRecoveryWorkflow.k3")
    ]
    assert events[0]["payload"]["serviceKey"] == "k3"


@pytest.mark.prefect
async def test_an_answered_error_becomes_a_failed_run_with_the_code(
    prefect_server: PrefectServer,
) -> None:
    error = AdminUnreachableError("RESTATE_ADMIN_URL is not set")
    record = doctor_run_record(
        AnsweredReadout(None, error, None), source="CLI", actor="dan", service_url=None
    )
    recorder = RunRecorder()

    run_id = await recorder.record(record)
    await recorder.aclose()

    run = await prefect_get(prefect_server, f"flow_runs/{run_id}")
    assert run["state_type"] == "FAILED"
    assert run["state"]["message"].startswith("RESTATE_ADMIN_UNREACHABLE: ")
    artifacts = await prefect_filter(
        prefect_server, "artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}}
    )
    assert artifacts == []
