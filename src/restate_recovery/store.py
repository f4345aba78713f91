"""The operations audit table and the API keys (SQLModel), and the functions that touch them.

SQLite file by default, PostgreSQL by URL (``RECOVERY_DATABASE_URL``); the schema is made by the
Alembic migrations in ``restate_recovery/migrations`` (``migrate``).

The audit table is append-only: a row is inserted when an attempt starts and finished exactly
once (``finish_attempt`` only touches a row whose ``finished_at`` is still empty); nothing
deletes or rewrites it. Arguments, the reason and errors are redacted before they are stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import JSON, Column, Field, Session, SQLModel, col, select

from restate_recovery.redaction import redact_arguments, redact_text
from restate_recovery.settings import get_settings

Outcome = Literal["success", "failure", "abandoned"]
SYSTEM_OPERATE = "system:operate"
KEY_PREFIX = "rrk"


def utcnow() -> datetime:
    return datetime.now(UTC)


def db_now(session: Session) -> datetime:
    """The audit database's clock (PostgreSQL's ``now()``), which every process sharing it
    agrees on: leases are set and compared by it, so a host whose clock is off neither steals a
    live lock nor keeps a dead one. SQLite lives on one machine: its clock is that machine's."""
    if session.get_bind().dialect.name != "postgresql":
        return utcnow()
    transaction = session.get_transaction()
    known = session.info.get("db_now")
    if transaction is not None and known is not None and known[0] is transaction:
        cached: datetime = known[1]  # now() is the transaction's start: asked once per transaction
        return cached
    found: datetime = session.execute(sa.text("SELECT now()")).scalar_one()
    found = found if found.tzinfo else found.replace(tzinfo=UTC)
    session.info["db_now"] = (session.get_transaction(), found)
    return found


# --- audit ------------------------------------------------------------------------------------


class AuditBase(SQLModel):
    actor_user_id: str = Field(max_length=255)
    role_at_time: str | None = Field(default=None, max_length=255)
    route: str = Field(max_length=255)
    arguments: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    reason: str | None = Field(default=None, max_length=2000)
    request_id: str | None = Field(default=None, max_length=128)


class AuditCreate(AuditBase):
    """What is known when an attempt starts."""


class OperationAudit(AuditBase, table=True):
    __tablename__ = "operation_audit"

    id: int | None = Field(default=None, primary_key=True)
    started_at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    finished_at: datetime | None = Field(
        default=None, sa_column=Column(sa.DateTime(timezone=True), nullable=True)
    )
    outcome: str | None = Field(default=None, max_length=16)
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    flow_run_id: str | None = Field(default=None, max_length=64)
    # Who runs the attempt while it is open (host:pid:start), and until when it is known alive:
    # its process renews the lease; a row whose lease ran out was left by a dead process.
    owner: str | None = Field(default=None, max_length=128)
    lease_expires_at: datetime | None = Field(
        default=None, sa_column=Column(sa.DateTime(timezone=True), nullable=True)
    )


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite drops the zone: everything stored is UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def audit_public(row: OperationAudit) -> dict[str, Any]:
    """A row as the CLI and API show it (camelCase)."""
    return {
        "id": row.id,
        "actorUserId": row.actor_user_id,
        "roleAtTime": row.role_at_time,
        "route": row.route,
        "arguments": row.arguments,
        "reason": row.reason,
        "startedAt": _iso(row.started_at),
        "finishedAt": _iso(row.finished_at),
        "outcome": row.outcome,
        "error": row.error,
        "requestId": row.request_id,
        "flowRunId": row.flow_run_id,
    }


def record_attempt(
    *,
    session: Session,
    attempt: AuditCreate,
    started_at: datetime | None = None,
    owner: str | None = None,
    lease_expires_at: datetime | None = None,
    flow_run_id: str | None = None,
    commit: bool = True,
) -> int:
    """Insert the row of an attempt that is starting; returns its id (committed at once, unless
    the caller commits a batch of rows itself)."""
    data = attempt.model_dump()
    data.update(owner=owner, lease_expires_at=lease_expires_at, flow_run_id=flow_run_id)
    data["arguments"] = redact_arguments(data["arguments"])
    data["reason"] = redact_text(data["reason"]) if data["reason"] else data["reason"]
    data["started_at"] = started_at or utcnow()
    # One prebuilt Core statement, parameters apart: building an ORM insert per call cost
    # about 2 ms of CPU on the doctor's answer path (it runs while the doctor probes).
    inserted = session.connection().execute(_insert_audit(), data)
    if commit:
        session.commit()
    (attempt_id,) = inserted.inserted_primary_key or (None,)
    if not isinstance(attempt_id, int):
        raise RuntimeError("the audit database returned no id for the new row")
    return attempt_id


@cache
def _insert_audit() -> sa.Insert:
    table: sa.Table = OperationAudit.__table__  # type: ignore[attr-defined]
    return sa.insert(table)


def finish_attempt(
    *,
    session: Session,
    attempt_id: int,
    outcome: Outcome,
    error: dict[str, Any] | None = None,
    flow_run_id: str | None = None,
    commit: bool = True,
) -> None:
    """Finish an attempt, once: a finished row is never changed again (committed at once, unless
    the caller commits a batch itself)."""
    session.connection().execute(
        _finish_audit(),
        {
            "row_id": attempt_id,
            "finished_at": utcnow(),
            "outcome": outcome,
            "error": redact_arguments(error) if error else None,
            "flow_run_id": flow_run_id,
        },
    )
    if commit:
        session.commit()


@cache
def _finish_audit() -> sa.Update:
    """A prebuilt Core update (an ORM update per call evaluates it against the session too)."""
    table: sa.Table = OperationAudit.__table__  # type: ignore[attr-defined]
    return (
        sa.update(table)
        .where(table.c.id == sa.bindparam("row_id"))
        .where(table.c.finished_at.is_(None))
        .values(
            finished_at=sa.bindparam("finished_at"),
            outcome=sa.bindparam("outcome"),
            error=sa.bindparam("error"),
            flow_run_id=sa.bindparam("flow_run_id"),
        )
    )


def renew_attempts(*, session: Session, attempt_ids: list[int], until: datetime) -> None:
    """Push the leases of open attempts (their process is alive) to ``until``."""
    session.execute(
        sa.update(OperationAudit)
        .where(col(OperationAudit.id).in_(attempt_ids))
        .where(col(OperationAudit.finished_at).is_(None))
        .values(lease_expires_at=until)
    )
    session.commit()


@dataclass(frozen=True)
class Abandoned:
    """An attempt closed because its process stopped before it finished."""

    id: int
    route: str
    flow_run_id: str | None
    owner: str | None


def close_abandoned(
    *, session: Session, now: datetime, grace: timedelta, dead: Callable[[str | None], bool]
) -> list[Abandoned]:
    """Close, with outcome ``abandoned``, every open attempt whose lease ran out more than
    ``grace`` ago, or whose owner is known ``dead`` (a process of this host that is gone).
    Each is closed only if it is still open and unrenewed: a live owner's renewal wins."""
    candidates = session.exec(
        select(OperationAudit).where(col(OperationAudit.finished_at).is_(None))
    ).all()
    closed: list[Abandoned] = []
    for row in candidates:
        lease = row.lease_expires_at
        if lease is not None and lease.tzinfo is None:
            lease = lease.replace(tzinfo=UTC)
        expired = lease is None or lease < now - grace
        if not (expired or dead(row.owner)):
            continue
        if row.id is None:
            continue
        statement = (
            sa.update(OperationAudit)
            .where(col(OperationAudit.id) == row.id)
            .where(col(OperationAudit.finished_at).is_(None))
        )
        if row.lease_expires_at is not None:
            statement = statement.where(
                col(OperationAudit.lease_expires_at) == row.lease_expires_at
            )
        result = session.execute(
            statement.values(
                finished_at=now,
                outcome="abandoned",
                error={"code": ABANDONED, "message": ABANDONED_MESSAGE},
            )
        )
        if result.rowcount:  # type: ignore[attr-defined]
            closed.append(Abandoned(row.id, row.route, row.flow_run_id, row.owner))
    session.commit()
    return closed


ABANDONED = "ATTEMPT_ABANDONED"
ABANDONED_MESSAGE = (
    "The process running this attempt stopped before it finished: some of its steps may have "
    "run. Run doctor, then the runbook again (it converges)."
)


def list_attempts(*, session: Session, limit: int = 50) -> list[OperationAudit]:
    statement = select(OperationAudit).order_by(col(OperationAudit.id).desc()).limit(limit)
    return list(session.exec(statement))


# --- per-target write locks --------------------------------------------------------------------


class RecoveryLock(SQLModel, table=True):
    """One write at a time per target: a row per held lock, with a short lease its holder renews.
    A dead holder's lease runs out in seconds; the next writer takes the lock then."""

    __tablename__ = "recovery_lock"

    target: str = Field(primary_key=True, max_length=255)
    holder: str = Field(max_length=64)
    owner: str = Field(max_length=128)
    attempt_id: int | None = None
    flow_run_id: str | None = Field(default=None, max_length=64)
    acquired_at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    expires_at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))


def try_lock(
    *, session: Session, lock: RecoveryLock, now: datetime, commit: bool = True
) -> RecoveryLock | None:
    """Take ``lock`` if its target is free (or its holder's lease ran out); None when taken,
    else the row that holds it (committed at once, unless the caller commits a batch itself:
    a target already held changes nothing in the batch, so the batch goes on)."""
    table: sa.Table = RecoveryLock.__table__  # type: ignore[attr-defined]
    session.execute(
        sa.delete(table).where(table.c.target == lock.target).where(table.c.expires_at < now)
    )
    insert = (pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert)(
        table
    )
    session.execute(insert.values(**lock.model_dump()).on_conflict_do_nothing())
    held = session.execute(sa.select(table).where(table.c.target == lock.target)).first()
    if commit:
        session.commit()
    if held is None:
        return lock  # released meanwhile: the caller asks again
    if held.holder == lock.holder:
        return None  # taken
    return RecoveryLock(**held._asdict())


def renew_locks(*, session: Session, holders: list[str], until: datetime) -> list[str]:
    """Push the leases of the locks ``holders`` still hold to ``until``; returns the holders
    whose lock is gone (its lease ran out and another writer took it, or a sweep released it)."""
    table: sa.Table = RecoveryLock.__table__  # type: ignore[attr-defined]
    session.execute(sa.update(table).where(table.c.holder.in_(holders)).values(expires_at=until))
    session.commit()
    kept = session.execute(sa.select(table.c.holder).where(table.c.holder.in_(holders)))
    still = {str(row[0]) for row in kept}
    return [holder for holder in holders if holder not in still]


def release_lock(*, session: Session, holder: str, commit: bool = True) -> None:
    table: sa.Table = RecoveryLock.__table__  # type: ignore[attr-defined]
    session.execute(sa.delete(table).where(table.c.holder == holder))
    if commit:
        session.commit()


def release_locks_of(*, session: Session, attempt_ids: list[int], owners: list[str]) -> int:
    """Release the locks held by closed attempts or by dead processes."""
    table: sa.Table = RecoveryLock.__table__  # type: ignore[attr-defined]
    result = session.execute(
        sa.delete(table).where(
            sa.or_(table.c.attempt_id.in_(attempt_ids), table.c.owner.in_(owners))
        )
    )
    session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


def locks(*, session: Session) -> list[RecoveryLock]:
    return list(session.exec(select(RecoveryLock)))


# --- pending plans ------------------------------------------------------------------------------


class PendingPlan(SQLModel, table=True):
    """The one plan of a target that waits for approval (``awaiting``), or the last one a person
    rejected (``rejected``: the target is quiet until ``quiet_until``)."""

    __tablename__ = "pending_plan"

    target: str = Field(primary_key=True, max_length=255)
    runbook: str = Field(max_length=64)
    flow_run_id: str = Field(max_length=64)
    fingerprint: str | None = Field(default=None, max_length=64)
    state: str = Field(max_length=16)
    created_at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    decided_at: datetime | None = Field(
        default=None, sa_column=Column(sa.DateTime(timezone=True), nullable=True)
    )
    decided_by: str | None = Field(default=None, max_length=255)
    quiet_until: datetime | None = Field(
        default=None, sa_column=Column(sa.DateTime(timezone=True), nullable=True)
    )


def aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite drops the zone: all stored is UTC
        return value.replace(tzinfo=UTC)
    return value


def plans(*, session: Session) -> list[PendingPlan]:
    return list(session.exec(select(PendingPlan)))


def plan_of(*, session: Session, target: str) -> PendingPlan | None:
    plan = session.get(PendingPlan, target)
    if plan is not None:
        session.expunge(plan)
        plan.created_at = aware(plan.created_at) or plan.created_at
        plan.quiet_until = aware(plan.quiet_until)
    return plan


def take_plan(*, session: Session, plan: PendingPlan, replacing: PendingPlan | None) -> bool:
    """Make ``plan`` the target's pending plan: a new row, or in place of ``replacing`` (only if
    that is still the row: compare-and-swap). False when another run took it first."""
    table: sa.Table = PendingPlan.__table__  # type: ignore[attr-defined]
    values = plan.model_dump()
    try:
        if replacing is None:
            session.execute(sa.insert(table).values(**values))
        else:
            result = session.execute(
                sa.update(table)
                .where(table.c.target == plan.target)
                .where(table.c.flow_run_id == replacing.flow_run_id)
                .where(table.c.state == replacing.state)
                .values(**values)
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                session.rollback()
                return False
        session.commit()
    except sa.exc.IntegrityError:
        session.rollback()
        return False
    return True


def decide_plan(
    *,
    session: Session,
    target: str,
    flow_run_id: str,
    rejected_by: str | None = None,
    quiet_until: datetime | None = None,
) -> None:
    """The run's plan is decided: rejected (the target stays quiet until ``quiet_until``), or
    approved, timed out or ended (its row goes)."""
    table: sa.Table = PendingPlan.__table__  # type: ignore[attr-defined]
    owned = (table.c.target == target) & (table.c.flow_run_id == flow_run_id)
    if rejected_by is None:
        session.execute(sa.delete(table).where(owned))
    else:
        session.execute(
            sa.update(table)
            .where(owned)
            .values(
                state="rejected",
                decided_at=utcnow(),
                decided_by=rejected_by,
                quiet_until=quiet_until,
            )
        )
    session.commit()


def drop_plans(*, session: Session, flow_run_ids: list[str]) -> int:
    """Forget the pending plans of runs that ended without a decision (crashed, cancelled)."""
    table: sa.Table = PendingPlan.__table__  # type: ignore[attr-defined]
    result = session.execute(
        sa.delete(table)
        .where(table.c.flow_run_id.in_(flow_run_ids))
        .where(table.c.state == "awaiting")
    )
    session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


# --- API keys ---------------------------------------------------------------------------------


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_key"

    id: str = Field(primary_key=True, max_length=32)
    key_hash: str = Field(max_length=64)
    actor_user_id: str = Field(max_length=255)
    role: str = Field(max_length=255)
    permissions: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    revoked_at: datetime | None = Field(
        default=None, sa_column=Column(sa.DateTime(timezone=True), nullable=True)
    )


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def api_key_public(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "actor": key.actor_user_id,
        "role": key.role,
        "permissions": key.permissions,
        "createdAt": _iso(key.created_at),
        "revokedAt": _iso(key.revoked_at),
    }


def check_label(value: str, what: str, *, limit: int = 255) -> str:
    """An actor, role or permission as audit rows will show it: 1 to ``limit`` characters, none
    of them a control character, no surrounding blanks. ``ValueError`` says what is wrong."""
    if not value or value != value.strip():
        raise ValueError(f"{what} must not be empty nor start or end with blanks")
    if len(value) > limit:
        raise ValueError(f"{what} must be at most {limit} characters (got {len(value)})")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in value):
        raise ValueError(f"{what} must not hold control characters or line breaks")
    return value


def create_api_key(
    *, session: Session, actor: str, role: str, permissions: list[str]
) -> tuple[ApiKey, str]:
    """A new key; the plaintext (``rrk_<id>_<secret>``) is returned once and never stored.
    ``ValueError`` for an actor, role or permission rows could not show faithfully."""
    check_label(actor, "actor")
    check_label(role, "role")
    for permission in permissions:
        check_label(permission, "permission", limit=64)
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    row = ApiKey(
        id=key_id,
        key_hash=_hash(secret),
        actor_user_id=actor,
        role=role,
        permissions=sorted(set(permissions)),
        created_at=utcnow(),
    )
    session.add(row)
    session.commit()
    session.refresh(row)
    return row, f"{KEY_PREFIX}_{key_id}_{secret}"


@dataclass(frozen=True)
class KeyHolder:
    """Who a live API key belongs to (the audit row's actor and role), and what it may do."""

    actor_user_id: str
    role: str
    permissions: list[str]


def authenticate(*, session: Session, presented: str) -> KeyHolder | None:
    """The holder of the live key matching ``presented`` (constant-time comparison of the
    hashes), or None. A prebuilt Core select: it runs before every operator route."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(presented) > 256:
        hmac.compare_digest(_hash(presented), _hash("x"))  # same work either way
        return None
    row = session.connection().execute(_select_key(), {"key_id": parts[1]}).first()
    expected = row.key_hash if row is not None else _hash("no such key")
    matches = hmac.compare_digest(expected, _hash(parts[2]))
    if row is None or not matches or row.revoked_at is not None:
        return None
    return KeyHolder(
        actor_user_id=row.actor_user_id, role=row.role, permissions=list(row.permissions)
    )


@cache
def _select_key() -> sa.Select[Any]:
    table: sa.Table = ApiKey.__table__  # type: ignore[attr-defined]
    return sa.select(table).where(table.c.id == sa.bindparam("key_id"))


def list_api_keys(*, session: Session) -> list[ApiKey]:
    return list(session.exec(select(ApiKey).order_by(col(ApiKey.created_at))))


def revoke_api_key(*, session: Session, key_id: str) -> bool:
    key = session.get(ApiKey, key_id)
    if key is None:
        return False
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.add(key)
        session.commit()
    return True


# --- the database -----------------------------------------------------------------------------

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` use psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@cache
def engine_for(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


# The newest migration in migrations/versions (a unit test holds this to Alembic's own head).
HEAD_REVISION = "0004"


def at_head(url: str) -> bool:
    """Whether the schema is already the newest, read without loading Alembic (which costs
    about 0.1 s of every CLI call otherwise)."""
    try:
        with engine_for(url).connect() as connection:
            versions = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            return [row[0] for row in versions] == [HEAD_REVISION]
    except sa.exc.DBAPIError:  # no such table yet: a new database
        return False


def database_url() -> str:
    """The configured audit database (``RECOVERY_DATABASE_URL``)."""
    return get_settings().recovery_database_url


_migrating = threading.Lock()


def engine(url: str | None = None) -> Engine:
    """The engine of the audit database (``url``, else the configured one), brought to the newest
    schema on first use in this process (by one thread: the others wait for it; once it is
    there, no thread waits for another to look it up)."""
    url = url or database_url()
    found = _ready.get(url)
    if found is not None:
        return found
    with _migrating:
        _ready[url] = _migrated(url)
        return _ready[url]


_ready: dict[str, Engine] = {}


@cache
def _migrated(url: str) -> Engine:
    migrate(url)
    return engine_for(url)


@cache
def database_id(url: str | None = None) -> str:
    """The audit database's own identity (made by its migration, kept for its life)."""
    with engine(url).connect() as connection:
        found = connection.execute(sa.text("SELECT id FROM audit_database")).scalar_one()
    return str(found)


def migrate(url: str) -> None:
    """Bring the database to the newest schema (Alembic ``upgrade head``); a no-op at head."""
    if at_head(url):
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine_for(url).begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
