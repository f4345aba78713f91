"""The audit table and API keys on both databases: SQLite files and the machine's PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from restate_recovery import store
from restate_recovery.redaction import redact_arguments


@pytest.fixture(params=["sqlite", "postgresql"])
def session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Session]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'audit.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    store.migrate(url)
    store.migrate(url)  # idempotent
    with Session(store.engine_for(url)) as s:
        yield s


def test_migrations_create_both_tables(session: Session) -> None:
    tables = set(sa.inspect(session.get_bind()).get_table_names())
    assert {"operation_audit", "api_key", "alembic_version"} <= tables


def test_head_revision_is_alembics_head() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(store.MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_current_head() == store.HEAD_REVISION


def test_a_new_database_is_at_head_only_once_migrated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert not store.at_head(url)
    store.migrate(url)
    assert store.at_head(url)
    assert {"operation_audit", "api_key"} <= set(
        sa.inspect(store.engine_for(url)).get_table_names()
    )


def test_keys_are_stored_hashed_and_checked(session: Session) -> None:
    key, plaintext = store.create_api_key(
        session=session, actor="u1", role="ops", permissions=["system:operate", "system:operate"]
    )
    assert key.permissions == ["system:operate"]
    stored = session.exec(
        sa.text("SELECT key_hash FROM api_key WHERE id = :id").bindparams(id=key.id)
    )  # type: ignore[call-overload]
    (key_hash,) = stored.one()
    secret = plaintext.split("_", 2)[2]
    assert secret not in key_hash and plaintext not in key_hash
    found = store.authenticate(session=session, presented=plaintext)
    assert found is not None and found.actor_user_id == "u1"
    for wrong in (plaintext + "x", plaintext[:-1], f"rrk_{key.id}_", "rrk_x_y", "", "x" * 500):
        assert store.authenticate(session=session, presented=wrong) is None
    assert store.revoke_api_key(session=session, key_id=key.id)
    assert store.authenticate(session=session, presented=plaintext) is None
    assert not store.revoke_api_key(session=session, key_id="nope")
    listed = {k.id: store.api_key_public(k) for k in store.list_api_keys(session=session)}
    assert listed[key.id]["revokedAt"] is not None and "key" not in listed[key.id]


def test_audit_rows_are_redacted_finished_once_and_listed_newest_first(session: Session) -> None:
    first = store.record_attempt(
        session=session,
        attempt=store.AuditCreate(
            actor_user_id="u1",
            role_at_time="ops",
            route="force-redeploy",
            arguments={
                "serviceUrl": "http://user:hunter2@svc:9080/v1?x=1#f",
                "nested": [{"headers": {"Authorization": "Bearer hunter2"}}],
            },
            reason="INC-1",
            request_id="r1",
        ),
    )
    store.finish_attempt(
        session=session,
        attempt_id=first,
        outcome="failure",
        error={"code": "X", "message": "at http://a:hunter2@h/"},
        flow_run_id="f1",
    )
    store.finish_attempt(session=session, attempt_id=first, outcome="success")  # no effect
    second = store.record_attempt(
        session=session,
        attempt=store.AuditCreate(actor_user_id="u2", route="doctor", arguments={}),
    )
    rows = [
        store.audit_public(r)
        for r in store.list_attempts(session=session, limit=1000)
        if r.id in (first, second)  # the PostgreSQL schema is shared by the session's tests
    ]

    assert [r["id"] for r in rows] == [second, first]
    assert rows[0]["outcome"] is None and rows[0]["finishedAt"] is None  # still running
    row = rows[1]
    assert row["arguments"] == {
        "serviceUrl": "http://REDACTED@svc:9080/v1?x=1#f",
        "nested": [{"headers": {"Authorization": "REDACTED"}}],
    }
    assert row["error"] == {"code": "X", "message": "at http://REDACTED@h/"}
    assert (row["outcome"], row["flowRunId"], row["reason"]) == ("failure", "f1", "INC-1")
    assert row["startedAt"].endswith("Z") and row["finishedAt"].endswith("Z")
    assert "hunter2" not in str(rows)


def test_redaction_keeps_everything_but_user_information() -> None:
    assert redact_arguments(
        {"a": ["https://u:p@[::1]:8443/p@x?q=@#frag", 3, None], "token": None, "apiKey": "k"}
    ) == {
        "a": ["https://REDACTED@[::1]:8443/p@x?q=@#frag", 3, None],
        "token": None,
        "apiKey": "REDACTED",
    }


async def test_a_doctor_call_cancelled_mid_probe_still_finishes_its_audit_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from restate_recovery import execution
    from restate_recovery.audit import Attempt
    from restate_recovery.settings import get_settings

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    monkeypatch.setenv("RECOVERY_DATABASE_URL", url)
    monkeypatch.setenv("RESTATE_ADMIN_URL", "http://127.0.0.1:9")
    get_settings.cache_clear()
    probing = asyncio.Event()

    async def never_answers(*_: object, **__: object) -> None:
        probing.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(execution, "run_doctor", never_answers)
    recorder = execution.DoctorAnswers(source="test", max_pending=1)
    call = asyncio.create_task(
        recorder.answer(Attempt(actor="u", role="ops", route="doctor", request_id="gone"))
    )
    await probing.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await recorder.drain(timeout=10)
    await recorder.aclose()
    get_settings.cache_clear()
    with Session(store.engine_for(url)) as session:
        (row,) = store.list_attempts(session=session)
    assert row.request_id == "gone" and row.finished_at is not None
    assert row.outcome == "failure" and row.error == {
        "code": "INTERNAL_ERROR",
        "message": "unexpected CancelledError",
    }


async def test_concurrent_audit_rows_are_written_in_few_transactions_each_its_own_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 attempts at once on one event loop: 50 rows, started and finished, in a handful of
    commits (a batch per transaction while the previous one commits)."""
    import asyncio

    import sqlalchemy as sa

    from restate_recovery.audit import Attempt, AuditedAttempt
    from restate_recovery.settings import get_settings

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    monkeypatch.setenv("RECOVERY_DATABASE_URL", url)
    get_settings.cache_clear()
    engine = store.engine(url)
    commits: list[int] = []
    sa.event.listen(engine, "commit", lambda _: commits.append(1))
    rows = [AuditedAttempt(Attempt(actor=f"u{n}", role="ops", route="doctor", request_id=f"r{n}"))
            for n in range(50)]  # fmt: skip
    ids = await asyncio.gather(*(row.start() for row in rows))
    inserted = len(commits)
    await asyncio.gather(*(row.finish(None if n % 2 else {"code": "X", "message": "m"})
                           for n, row in enumerate(rows)))  # fmt: skip
    finished = len(commits) - inserted
    get_settings.cache_clear()
    assert len(set(ids)) == 50
    assert inserted < 25 and finished < 25, (inserted, finished)
    with Session(engine) as session:
        written = {r.request_id: r for r in store.list_attempts(session=session, limit=100)}
    assert sorted(str(k) for k in written) == sorted(f"r{n}" for n in range(50))
    assert all(r.finished_at is not None for r in written.values())
    assert [written[f"r{n}"].outcome for n in range(4)] == ["failure", "success"] * 2
    assert written["r0"].error == {"code": "X", "message": "m"}


async def test_a_batch_the_database_refuses_is_written_again_row_by_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from sqlalchemy.exc import OperationalError

    from restate_recovery.audit import Attempt, AuditedAttempt
    from restate_recovery.settings import get_settings

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    monkeypatch.setenv("RECOVERY_DATABASE_URL", url)
    get_settings.cache_clear()
    original = store.record_attempt

    def batch_refused(**kwargs: object) -> int:
        if kwargs.get("commit") is False:
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return original(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "record_attempt", batch_refused)
    rows = [AuditedAttempt(Attempt(actor="u", role="ops", route="doctor", request_id=f"b{n}"))
            for n in range(10)]  # fmt: skip
    ids = await asyncio.gather(*(row.start() for row in rows))
    await asyncio.gather(*(row.finish() for row in rows))
    get_settings.cache_clear()
    assert len(set(ids)) == 10
    with Session(store.engine(url)) as session:
        written = store.list_attempts(session=session, limit=100)
    assert sorted(r.request_id or "" for r in written) == sorted(f"b{n}" for n in range(10))
    assert all(r.outcome == "success" for r in written)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_locks_and_rows_of_one_loop_share_transactions_and_each_lock_has_one_holder(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """20 writers at once, two per target, each with its row and its target's lock (as the
    batch recovers keys): the locks are taken and released in the same batched transactions as
    the rows, and never two writers of one target inside at once; nothing is left held."""
    import asyncio

    import sqlalchemy as sa

    from restate_recovery import leases
    from restate_recovery.audit import Attempt, AuditedAttempt
    from restate_recovery.settings import get_settings

    url = (
        f"sqlite:///{tmp_path / 'audit.db'}"
        if database == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    monkeypatch.setenv("RECOVERY_DATABASE_URL", url)
    get_settings.cache_clear()
    engine = store.engine(url)
    commits: list[int] = []
    sa.event.listen(engine, "commit", lambda _: commits.append(1))
    inside: dict[str, int] = {}
    overlaps: list[str] = []

    async def writer(n: int) -> None:
        target = f"workflow:W:{n % 10}-{database}"
        row = AuditedAttempt(Attempt(actor="u", role="ops", route="lock", request_id=f"l{n}"))
        attempt_id = await row.start()
        async with leases.lock(target, timeout=30, attempt_id=attempt_id):
            if inside.get(target):
                overlaps.append(target)
            inside[target] = inside.get(target, 0) + 1
            await asyncio.sleep(0.02)
            inside[target] -= 1
        await row.finish()

    await asyncio.gather(*(writer(n) for n in range(20)))
    get_settings.cache_clear()
    assert overlaps == []
    assert len(commits) < 60, len(commits)  # 80 writes (row, take, release, finish) each alone
    with Session(engine) as session:
        assert [lock.target for lock in store.locks(session=session)] == []
        rows = [r for r in store.list_attempts(session=session, limit=100) if r.route == "lock"]
    assert sorted(r.request_id or "" for r in rows) == sorted(f"l{n}" for n in range(20))
    assert all(r.finished_at is not None and r.outcome == "success" for r in rows)
