"""One registry of runbooks (``restate_recovery.runbooks``), and everything that lists runbooks
reads it: the operator API's routes, the CLI's commands, prefect.yaml, deployments/serve.py and
deployments/automations.py. Plain checks, no server."""

from __future__ import annotations

import inspect
import uuid
from pathlib import Path
from typing import Any

import yaml

from restate_recovery.doctor.findings import RUNBOOK_LABEL, STATE_LABEL
from restate_recovery.paths import PREFIX
from restate_recovery.runbooks import DOCTOR, RUNBOOKS, WRITES, for_finding
from tests.support.local_stack import PROJECT_DIR


def prefect_yaml() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PROJECT_DIR / "prefect.yaml").read_text())
    return loaded


def test_each_flow_takes_its_request_model_and_is_named_as_registered() -> None:
    for entry in RUNBOOKS:
        flow = entry.flow()
        assert flow.name == entry.flow_name
        parameters = inspect.signature(flow.fn).parameters
        if entry.writes:
            assert list(parameters) == [
                "request",
                "operator",
                "reason",
                "dry_run",
                "require_approval",
                "alert",
            ]
            assert parameters["request"].annotation in (entry.request, entry.request.__name__)
            assert parameters["dry_run"].default is True  # a missed toggle plans, never writes
        assert Path(PROJECT_DIR / entry.entrypoint.split(":")[0]).is_file()


def test_prefect_yaml_deploys_every_runbook_of_the_registry_and_nothing_else() -> None:
    deployments = {d["entrypoint"]: d for d in prefect_yaml()["deployments"]}

    assert set(deployments) == {entry.entrypoint for entry in RUNBOOKS}
    for entry in RUNBOOKS:
        deployment = deployments[entry.entrypoint]
        assert deployment["name"] == entry.deployment
        assert deployment["enforce_parameter_schema"] is True
        # no deployment concurrency limit: a paused run would lose its slot, then crash
        assert "concurrency_limit" not in deployment
        if not entry.writes:
            assert deployment["schedules"][0]["slug"] == "restate-doctor-every-5-minutes"
    assert len({d["name"] for d in deployments.values()}) == len(RUNBOOKS)  # distinct names


def test_the_serve_entrypoint_serves_the_registry() -> None:
    from deployments.serve import deployments

    served = {d.flow_name: d for d in deployments()}

    assert set(served) == {entry.flow_name for entry in RUNBOOKS}
    for entry in RUNBOOKS:
        deployment = served[entry.flow_name]
        assert deployment.name == entry.deployment
        assert deployment.entrypoint == f"{entry.module}.{entry.function}"
        assert deployment.enforce_parameter_schema
        assert deployment.concurrency_limit is None
    assert [s.slug for s in served[DOCTOR.flow_name].schedules or []] == [
        "restate-doctor-every-5-minutes"
    ]


def test_each_write_runbook_has_the_automation_of_its_finding() -> None:
    from deployments.automations import automation_name, definitions

    ids = {entry.name: uuid.uuid4() for entry in RUNBOOKS}
    automations = {a.name: a for a in definitions(ids)}
    notified = {a.name for a in definitions(ids, webhook_block=uuid.uuid4())}

    assert len(automations) == len(WRITES) + 1  # and the alert that runs the doctor
    assert notified - set(automations) == {"restate-plan-awaiting-approval-notifies"}
    for entry in WRITES:
        assert entry.finding is not None and for_finding(entry.finding) is entry
        automation = automations[automation_name(entry)]
        trigger: Any = automation.trigger
        assert trigger.expect == {entry.finding}
        assert trigger.match.model_dump() == {RUNBOOK_LABEL: entry.name, STATE_LABEL: "new"}
        (action,) = automation.actions
        assert action.deployment_id == ids[entry.name]  # type: ignore[union-attr]
        assert action.parameters == {  # type: ignore[union-attr]
            "request": "{{ event.payload.request }}",
            "operator": f"automation:{automation_name(entry)}",
            "reason": "{{ event.payload.reason }}",
            "alert": "{{ event.payload.get('alert') }}",
            "dry_run": False,
            "require_approval": True,
        }


def test_the_api_serves_a_route_per_runbook() -> None:
    from restate_recovery.api.main import create_app

    paths = set(create_app().openapi()["paths"])

    assert {entry.route for entry in RUNBOOKS} | {f"{PREFIX}/alerts", f"{PREFIX}/explain"} == paths


def test_the_cli_has_a_command_per_runbook() -> None:
    from restate_recovery.cli.main import app

    common = {"as_json", "reason", "dry_run"}
    for entry in RUNBOOKS:
        command = app.commands[entry.name]
        options = {p.name for p in command.params} - common
        # every field of the route's request is an option of its command, and nothing else
        assert options == set(entry.request.model_fields), (entry.name, options)
