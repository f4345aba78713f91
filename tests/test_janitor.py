"""The sweep on a real Prefect server shared by two audit databases: each marks Crashed only the
runs of its own attempts (tag ``audit-db:<id>``), never another database's run that happens to
carry the same row number."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.states import Running

from restate_recovery import janitor, store
from restate_recovery.audit import Attempt, AuditedAttempt
from restate_recovery.settings import get_settings
from tests.support.local_stack import PrefectServer

pytestmark = pytest.mark.prefect


async def running_run(tags: list[str]) -> str:
    """A flow run left Running, as a process that died (or a Prefect that went away) leaves it."""
    async with get_client() as client:
        created = await client.create_flow_run(
            flow=left_running, tags=tags, state=Running(), name="left-running"
        )
    return str(created.id)


@flow(name="janitor-test")
def left_running() -> None:
    return None


async def state_of(run_id: str) -> str:
    from uuid import UUID

    async with get_client() as client:
        run = await client.read_flow_run(UUID(run_id))
    assert run.state is not None
    return run.state.type.value


async def test_a_sweep_crashes_only_the_runs_of_its_own_audit_database(
    prefect_server: PrefectServer,
    tmp_path: Path,
    settings_env: pytest.MonkeyPatch,
) -> None:
    ours, theirs = (f"sqlite:///{tmp_path / name}.db" for name in ("ours", "theirs"))
    settings_env.setattr(janitor, "SETTLE_AFTER", timedelta(0))
    assert store.database_id(ours) != store.database_id(theirs)

    settings_env.setenv("RECOVERY_DATABASE_URL", ours)
    get_settings.cache_clear()
    row = AuditedAttempt(Attempt(actor="ops", role="ops", route="recover-stuck-workflow"))
    attempt_id = await row.start()
    await row.finish()  # finished: a run of it still Running is debris

    mine = await running_run(list(janitor.attempt_tags(attempt_id)))
    foreign = await running_run(
        [janitor.AUDITED, f"audit:{attempt_id}", f"audit-db:{store.database_id(theirs)}"]
    )  # the same row number, in the other database, whose attempt still runs

    await janitor.sweep()

    assert await state_of(mine) == "CRASHED"
    assert await state_of(foreign) == "RUNNING"
