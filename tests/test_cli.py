"""The operator CLI in its local mode (no DALP_API_URL), run as a real subprocess: break-glass
runs of the flows in the CLI's own process, audited as the OS user."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import RestateStack
from tests.support.helpers import artifacts_of, closed_port_url
from tests.support.local_stack import PrefectServer, submit_workflow, wait_for_status

pytestmark = [pytest.mark.restate, pytest.mark.prefect]

CLI = str(Path(sys.executable).parent / "restate-recovery")


def run_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=240, check=False
    )


def cli_env(restate: RestateStack | None, **extra: str) -> dict[str, str]:
    """The local mode's environment: no DALP_API_URL, Restate's URLs (unless None)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTATE_", "DALP_"))}
    if restate is not None:
        env["RESTATE_ADMIN_URL"] = restate.admin_url
        env["RESTATE_INGRESS_URL"] = restate.ingress_url
    env.update(extra)
    return env


def test_doctor_json_prints_exactly_the_readout(
    prefect_server: PrefectServer, restate: RestateStack
) -> None:
    key = f"cli_{uuid.uuid4().hex[:8]}"
    invocation_id = submit_workflow(restate.ingress_url, key, "fail")
    wait_for_status(restate.admin_url, invocation_id, "completed")

    result = run_cli("doctor", "--json", env=cli_env(restate))

    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)  # stdout is the JSON and nothing else
    assert set(body) == {"ingress", "admin", "deployments", "services", "invocations"}
    assert set(body["admin"]) == {"status", "latencyMs", "version"}
    assert (body["admin"]["status"], body["admin"]["version"]) == ("ok", "1.7.12")
    latency = body["admin"]["latencyMs"]
    assert isinstance(latency, int | float) and 0 < latency < 3000  # measured, within the bound
    assert body["deployments"]["items"][0]["serviceUrl"] == restate.service_url + "/"
    assert any(f["serviceKey"] == key for f in body["invocations"]["recentFailures"])
    assert "note: PREFECT_API_URL is not set" not in result.stderr


def test_doctor_records_exactly_the_printed_readout_as_a_run_before_it_exits(
    prefect_server: PrefectServer, restate: RestateStack, tmp_path: Path
) -> None:
    from restate_recovery.doctor.render import readout_markdown
    from restate_recovery.models import DoctorReadout

    env = cli_env(restate, RECOVERY_DATABASE_URL=f"sqlite:///{tmp_path / 'audit.db'}")

    result = run_cli("doctor", "--json", "--reason", "INC-3 café", env=env)

    assert result.returncode == 0, result.stderr
    printed = DoctorReadout.model_validate(json.loads(result.stdout))
    (row,) = json.loads(run_cli("audit", "list", "--json", env=env).stdout)
    assert (row["actorUserId"], row["roleAtTime"]) == (getpass.getuser(), "local-break-glass")
    assert (row["reason"], row["outcome"], row["finishedAt"] is None) == (
        "INC-3 café",
        "success",
        False,
    )
    api = prefect_server.api_url
    run = httpx.get(f"{api}/flow_runs/{row['flowRunId']}", timeout=10).json()
    assert (run["name"], run["state_type"], run["tags"]) == (
        "restate-doctor",
        "COMPLETED",
        ["via:CLI"],
    )
    assert run["parameters"]["answer"]["readout"] == printed.to_json()  # no second probe
    artifacts = artifacts_of(api, row["flowRunId"])
    (artifact,) = [a["data"] for a in artifacts]
    assert artifact.startswith("# Restate doctor: ")  # the verdict first
    component_tables = readout_markdown(printed).split("| component |", 1)[1]
    assert artifact.split("| component |", 1)[1] == component_tables  # exactly what was answered


def test_doctor_table_is_readable_from_any_directory(
    prefect_server: PrefectServer, restate: RestateStack, tmp_path: Path
) -> None:
    result = run_cli("doctor", env=cli_env(restate, COLUMNS="200"), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    for word in ("ingress", "admin", "deployments", "services", "invocations", "1.7.12"):
        assert word in result.stdout
    assert restate.deployment_id in result.stdout


def test_doctor_without_admin_url_exits_non_zero_with_the_error_body(
    prefect_server: PrefectServer,
) -> None:
    result = run_cli("doctor", "--json", env=cli_env(None))

    assert result.returncode == 1
    assert json.loads(result.stdout) == {
        "code": "RESTATE_ADMIN_UNREACHABLE",
        "message": "RESTATE_ADMIN_URL is not set",
    }


def test_doctor_works_with_no_prefect_server_on_a_fresh_prefect_home(
    tmp_path: Path, restate: RestateStack
) -> None:
    """The embedded default: no PREFECT_API_URL, a brand-new PREFECT_HOME, which starts from a
    copy of the pre-migrated database."""
    home = tmp_path / "fresh-prefect-home"
    env = cli_env(
        restate, PREFECT_HOME=str(home), RECOVERY_DATABASE_URL=f"sqlite:///{tmp_path / 'a.db'}"
    )
    env.pop("PREFECT_API_URL", None)

    result = run_cli("doctor", "--json", env=env)

    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["admin"]["status"] == "ok"
    assert "note: PREFECT_API_URL is not set" in result.stderr
    assert "starts from the pre-migrated database" in result.stderr
    (row,) = json.loads(run_cli("audit", "list", "--json", env=env).stdout)
    assert row["flowRunId"] is not None  # recorded in the temporary server
    assert (home / "prefect.db").stat().st_size > 0


def test_doctor_works_with_no_prefect_server_and_a_new_database_to_migrate(
    tmp_path: Path, restate: RestateStack
) -> None:
    """A database of the operator's own choosing is never seeded: Prefect migrates it (about
    20 s), within the start-up timeout we raise."""
    database = tmp_path / "own.db"
    env = cli_env(
        restate,
        PREFECT_HOME=str(tmp_path / "home"),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{database}",
    )
    env.pop("PREFECT_API_URL", None)

    result = run_cli("doctor", "--json", env=env)

    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["admin"]["status"] == "ok"
    assert "starts from the pre-migrated database" not in result.stderr
    assert not (tmp_path / "home" / "prefect.db").exists() and database.stat().st_size > 0


def test_recover_cli_json_acknowledges_and_refuses_with_the_error_body(
    prefect_server: PrefectServer, restate: RestateStack
) -> None:
    key = f"clirec_{uuid.uuid4().hex[:8]}"
    invocation_id = submit_workflow(restate.ingress_url, key, "fail")
    wait_for_status(restate.admin_url, invocation_id, "completed")
    args = ("recover-stuck-workflow", "--service-name", "IdentityRecoveryWorkflow")

    dry = run_cli(*args, "--service-key", key, "--dry-run", "--json", env=cli_env(restate))
    assert dry.returncode == 0, dry.stderr
    purge = json.loads(dry.stdout)["plan"][-1]
    assert (purge["action"], purge["target"]) == ("purge", invocation_id)

    done = run_cli(*args, "--service-key", key, "--reason", "INC-1", "--json", env=cli_env(restate))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"acknowledged": True}

    succeeded = f"cliok_{uuid.uuid4().hex[:8]}"
    ok_id = submit_workflow(restate.ingress_url, succeeded, "succeed")
    wait_for_status(restate.admin_url, ok_id, "completed")
    refused = run_cli(*args, "--service-key", succeeded, "--json", env=cli_env(restate))
    assert refused.returncode == 1
    assert json.loads(refused.stdout) == {
        "code": "RESTATE_WORKFLOW_RETRY_BLOCKED",
        "message": "Workflow retry is blocked: the workflow already completed successfully",
        "data": {"reason": "already-succeeded", "invocationIds": [ok_id]},
    }


def test_write_cli_rejects_bad_input_before_anything_runs(restate: RestateStack) -> None:
    bad_name = run_cli(
        "recover-stuck-workflow",
        "--service-name",
        "Bad Name",
        "--service-key",
        "k",
        "--json",
        env=cli_env(restate),
    )
    assert bad_name.returncode == 1
    body = json.loads(bad_name.stdout)
    assert body["code"] == "INVALID_REQUEST"
    assert body["data"]["errors"][0]["field"] == "serviceName"
    assert "Beginning flow run" not in bad_name.stderr  # no flow ran

    bad_url = run_cli("force-redeploy", "--service-url", "ftp://x", "--json", env=cli_env(restate))
    assert bad_url.returncode == 1
    assert json.loads(bad_url.stdout)["data"]["errors"][0]["field"] == "serviceUrl"


def test_cleanup_cli_not_found_lists_the_registered_urls(
    prefect_server: PrefectServer, restate: RestateStack
) -> None:
    result = run_cli(
        "cleanup-stale-deployments",
        "--service-url",
        "http://127.0.0.1:1/nothing",
        "--json",
        env=cli_env(restate),
    )
    assert result.returncode == 1
    body = json.loads(result.stdout)
    assert body["code"] == "RESTATE_DEPLOYMENT_NOT_FOUND"
    assert restate.service_url + "/" in body["message"]


def test_doctor_answers_even_when_its_run_cannot_be_recorded(
    restate: RestateStack, tmp_path: Path
) -> None:
    """The CLI prints the readout as soon as the probes are done, then records the run; a
    Prefect server that cannot be reached leaves the answer and the exit code as they are, and
    the audit row finished, without a flow run id."""
    database = f"sqlite:///{tmp_path / 'audit.db'}"
    env = cli_env(
        restate,
        PREFECT_API_URL=f"{closed_port_url()}/api",
        PREFECT_CLIENT_MAX_RETRIES="0",
        RECOVERY_DATABASE_URL=database,
    )

    result = run_cli("doctor", "--json", env=env)

    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["admin"]["status"] == "ok"
    assert "was not recorded in Prefect" in result.stderr
    rows = json.loads(run_cli("audit", "list", "--json", env=env).stdout)
    assert [(r["route"], r["outcome"], r["flowRunId"]) for r in rows] == [
        ("doctor", "success", None)
    ]
    assert rows[0]["finishedAt"] is not None and rows[0]["roleAtTime"] == "local-break-glass"


def test_explain_in_local_mode_is_audited_as_the_os_user(
    prefect_server: PrefectServer, restate: RestateStack, tmp_path: Path
) -> None:
    key = f"cliexplain_{uuid.uuid4().hex[:8]}"
    invocation_id = submit_workflow(restate.ingress_url, key, "fail")
    wait_for_status(restate.admin_url, invocation_id, "completed")
    database = f"sqlite:///{tmp_path / 'audit.db'}"
    env = cli_env(restate, RECOVERY_DATABASE_URL=database, USER="oncall", LOGNAME="oncall")

    told = run_cli("explain", "--invocation-id", invocation_id, "--json", env=env)

    assert told.returncode == 0, told.stderr
    assert json.loads(told.stdout)["suggestion"]["runbook"] == "recover-stuck-workflow"
    listed = run_cli("audit", "list", "--json", env=env)
    (row,) = json.loads(listed.stdout)
    assert (row["route"], row["actorUserId"], row["roleAtTime"], row["outcome"]) == (
        "explain",
        "oncall",
        "local-break-glass",
        "success",
    )
