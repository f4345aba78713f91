"""The restate-doctor flow, run for real against the session's Prefect server and Restate."""

from __future__ import annotations

import inspect
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.sorting import FlowRunSort

from restate_recovery.errors import AdminUnreachableError
from restate_recovery.models import DoctorReadout
from restate_recovery.runbooks import RUNBOOKS
from tests.conftest import RestateStack
from tests.support.local_stack import PrefectServer, submit_workflow, wait_for_status
from tests.support.runbooks import run_flow

pytestmark = [pytest.mark.restate, pytest.mark.prefect]


async def latest_run_of(flow_name: str) -> tuple[str, str, str | None, list[str]]:
    """(flow run id, state type, state message, artifact keys) of the newest run of a flow."""
    async with get_client() as client:
        runs = (
            await client.read_flow_runs(  # the newest of this flow, whatever else the session ran
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=50,
            )
        )
        run = max(runs, key=lambda r: r.created or datetime.min.replace(tzinfo=UTC))
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
        assert run.state is not None
        return (
            str(run.id),
            run.state.type.value,
            run.state.message,
            [a.key or "" for a in artifacts],
        )


async def test_doctor_flow_returns_the_readout_and_records_the_run(
    prefect_server: PrefectServer, restate_env: RestateStack
) -> None:
    key = f"flow_{uuid.uuid4().hex[:8]}"
    invocation_id = submit_workflow(restate_env.ingress_url, key, "fail")
    wait_for_status(restate_env.admin_url, invocation_id, "completed")

    readout = await run_flow("doctor")

    assert isinstance(readout, DoctorReadout)
    assert {name: part.status for name, part in readout.components()} == dict.fromkeys(
        ("ingress", "admin", "deployments", "services", "invocations"), "ok"
    )
    assert any(f.service_key == key for f in readout.invocations.recent_failures)
    run_id, state, _, artifact_keys = await latest_run_of("restate-doctor")
    assert state == "COMPLETED"
    assert artifact_keys == ["restate-doctor"]
    async with get_client() as client:
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(run_id)]))
        )
    assert sorted(t.name.rsplit("-", 1)[0] for t in tasks) == [
        "emit-findings",
        "probe-admin",
        "probe-deployments",
        "probe-ingress",
        "probe-invocations",
        "probe-services",
    ]


async def test_doctor_flow_without_admin_url_fails_with_the_code(
    prefect_server: PrefectServer, settings_env: pytest.MonkeyPatch
) -> None:
    settings_env.delenv("RESTATE_ADMIN_URL", raising=False)

    with pytest.raises(AdminUnreachableError):
        await run_flow("doctor")

    _, state, message, _ = await latest_run_of("restate-doctor")
    assert state == "FAILED"
    assert "RESTATE_ADMIN_UNREACHABLE" in (message or "")


def test_every_runbook_names_its_flow_and_deployment_as_prefect_sees_them() -> None:
    for runbook in RUNBOOKS:
        flow = runbook.flow()
        assert flow.name == runbook.flow_name
        assert runbook.deployment_name == f"{flow.name}/{runbook.deployment}"
        assert runbook.entrypoint.startswith(f"flows/{flow.fn.__name__}.py:")


async def test_doctor_calls_while_a_readout_is_read_share_it_one_record_a_row_each(
    prefect_server: PrefectServer,
    restate_env: RestateStack,
    tmp_path: Path,
    settings_env: pytest.MonkeyPatch,
) -> None:
    """20 calls at once: one probe and one restate-doctor run (whose log names the other 19),
    20 answers, 20 finished audit rows, each pointing at that run."""
    import asyncio

    from sqlmodel import Session

    from restate_recovery import execution, store
    from restate_recovery.audit import Attempt
    from restate_recovery.settings import get_settings

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    settings_env.setenv("RECOVERY_DATABASE_URL", url)
    get_settings.cache_clear()
    answers = execution.DoctorAnswers(source="test", max_pending=4)
    ids = [f"shared-{n}-{uuid.uuid4().hex[:6]}" for n in range(20)]
    try:
        readouts = await asyncio.gather(
            *(
                answers.answer(Attempt(actor=f"u{n}", role="ops", route="doctor", request_id=i))
                for n, i in enumerate(ids)
            )  # fmt: skip
        )
        await answers.drain(timeout=60)
    finally:
        await answers.aclose()
    assert answers.probes_read == 1
    assert all(r == readouts[0] for r in readouts) and readouts[0].admin.status == "ok"
    with Session(store.engine_for(url)) as session:
        rows = [r for r in store.list_attempts(session=session, limit=100) if r.request_id in ids]
    assert sorted(r.request_id or "" for r in rows) == sorted(ids)  # one row each
    assert all(r.finished_at is not None and r.outcome == "success" for r in rows)
    (run_id,) = {r.flow_run_id for r in rows}
    assert run_id is not None
    from prefect.logging.handlers import APILogWorker

    drained = APILogWorker.drain_all(timeout=10)  # the run's log lines are sent in the background
    if inspect.isawaitable(drained):  # an awaitable when called on an event loop
        await drained
    async with get_client() as client:
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(run_id)]))
        )
    lines = [log.message for log in logs]
    assert any("the same readout answered 19 more" in line for line in lines), lines
    assert any("u19 (" + ids[19] + ")" in line for line in lines), lines


def ingress_switch(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The doctor as it is, but with the ingress unreachable while the returned list is not
    empty (a readout unlike the healthy one)."""
    from restate_recovery import execution
    from restate_recovery.doctor.probes import run_doctor as real_run_doctor

    broken: list[bool] = []

    async def doctor(*args: object, **kwargs: object) -> DoctorReadout:
        readout = await real_run_doctor(*args, **kwargs)  # type: ignore[arg-type]
        if not broken:
            return readout
        ingress = readout.ingress.model_copy(update={"status": "unreachable", "error": "test"})
        return readout.model_copy(update={"ingress": ingress})

    monkeypatch.setattr(execution, "run_doctor", doctor)
    return broken


async def test_an_alike_record_waits_its_spacing_and_a_change_or_a_drain_ends_the_wait(
    prefect_server: PrefectServer,
    restate_env: RestateStack,
    tmp_path: Path,
    settings_env: pytest.MonkeyPatch,
) -> None:
    """Readouts alike the last recorded one become a run no sooner than the spacing after it (and
    share it); one that differs is recorded at once, with the alike one waiting before it; a
    drain records what waits at once. Every row finished, each pointing at its readout's run."""
    import asyncio

    from sqlmodel import Session

    from restate_recovery import execution, store
    from restate_recovery.audit import Attempt
    from restate_recovery.settings import get_settings

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    settings_env.setenv("RECOVERY_DATABASE_URL", url)
    get_settings.cache_clear()
    spacing = 6.0
    settings_env.setattr(execution, "RECORD_SPACING_SECONDS", spacing)
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    real_run_flow = execution.run_flow

    async def timed_record(*args: object, **kwargs: object) -> object:
        starts.append(loop.time())
        return await real_run_flow(*args, **kwargs)  # type: ignore[arg-type]

    broken_ingress = ingress_switch(settings_env)

    settings_env.setattr(execution, "run_flow", timed_record)
    answers = execution.DoctorAnswers(source="test", max_pending=8)
    tag = uuid.uuid4().hex[:6]

    async def call(name: str) -> None:
        attempt = Attempt(actor=name, role="ops", route="doctor", request_id=f"{name}-{tag}")
        await answers.answer(attempt)

    async def until(n: int, limit: float) -> None:
        deadline = loop.time() + limit
        while len(starts) < n:
            assert loop.time() < deadline, f"{len(starts)} records, {n} expected"
            await asyncio.sleep(0.05)

    try:
        await call("first")
        await until(1, 10)
        await call("alike-1")
        await call("alike-2")
        await asyncio.sleep(1.0)
        assert len(starts) == 1  # alike: waits for the spacing, not for the next call
        await until(2, spacing + 10)
        assert starts[1] - starts[0] >= spacing - 0.05
        await call("alike-3")  # alike the last record: would wait the spacing again
        broken_ingress.append(True)
        await call("unlike")
        changed_at = loop.time()
        await until(4, 30)
        assert starts[2] - changed_at < spacing / 2  # the change ended the wait
        await call("unlike-again")  # alike the last record: waits, but the drain is now
        drain_at = loop.time()
        await answers.drain(timeout=60)
    finally:
        await answers.aclose()
    assert len(starts) == 5 and starts[4] - drain_at < spacing / 2
    with Session(store.engine_for(url)) as session:
        rows = {
            (r.request_id or "").removesuffix(f"-{tag}"): r
            for r in store.list_attempts(session=session, limit=100)
        }
    names = ["first", "alike-1", "alike-2", "alike-3", "unlike", "unlike-again"]
    assert all(rows[n].finished_at is not None and rows[n].flow_run_id for n in names)
    run_of = {n: rows[n].flow_run_id for n in names}
    assert run_of["alike-1"] == run_of["alike-2"]
    assert len({run_of[n] for n in names}) == 5


async def test_readouts_read_while_a_record_is_made_wait_and_alike_ones_share_the_next_run(
    prefect_server: PrefectServer,
    restate_env: RestateStack,
    tmp_path: Path,
    settings_env: pytest.MonkeyPatch,
) -> None:
    """While the first answer's record is being made, four more calls come one after another:
    two readouts alike become one run (its log says so), one with the ingress unreachable a run
    of its own, and the healthy one after it another: no readout goes unrecorded, and each row
    points at the run of the readout it was answered with."""
    import asyncio

    from sqlmodel import Session

    from restate_recovery import execution, store
    from restate_recovery.audit import Attempt
    from restate_recovery.settings import get_settings

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    settings_env.setenv("RECOVERY_DATABASE_URL", url)
    get_settings.cache_clear()
    gate = asyncio.Event()
    real_run_flow = execution.run_flow
    started: list[str] = []

    async def gated_record(*args: object, **kwargs: object) -> object:
        started.append("record")
        if len(started) == 1:
            await gate.wait()  # the first record takes as long as the test wants
        return await real_run_flow(*args, **kwargs)  # type: ignore[arg-type]

    broken_ingress = ingress_switch(settings_env)

    settings_env.setattr(execution, "run_flow", gated_record)
    answers = execution.DoctorAnswers(source="test", max_pending=8)
    tag = uuid.uuid4().hex[:6]
    names = ["first", "alike-1", "alike-2", "unlike", "after"]
    try:
        for name in names:
            broken_ingress[:] = [True] if name == "unlike" else []
            await answers.answer(
                Attempt(actor=name, role="ops", route="doctor", request_id=f"{name}-{tag}")
            )
        assert started == ["record"]  # the others wait for the first record
        gate.set()
        await answers.drain(timeout=60)
    finally:
        await answers.aclose()
    assert answers.probes_read == 5 and answers.records_made == 4
    with Session(store.engine_for(url)) as session:
        rows = {
            (r.request_id or "").removesuffix(f"-{tag}"): r
            for r in store.list_attempts(session=session, limit=100)
        }
    assert all(rows[n].finished_at is not None for n in names)
    run_of = {n: rows[n].flow_run_id for n in names}
    assert run_of["alike-1"] == run_of["alike-2"]
    assert len({run_of[n] for n in ["first", "alike-1", "unlike", "after"]}) == 4
    assert None not in run_of.values()
    from prefect.logging.handlers import APILogWorker

    drained = APILogWorker.drain_all(timeout=10)
    if inspect.isawaitable(drained):
        await drained
    async with get_client() as client:
        logs = await client.read_logs(
            log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(str(run_of["alike-1"]))])
            )
        )
    lines = [log.message for log in logs]
    assert any(line.startswith("2 readouts with these component statuses") for line in lines)
    assert any(f"alike-2 (alike-2-{tag})" in line for line in lines), lines
