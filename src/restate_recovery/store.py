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
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import JSON, Column, Field, Session, SQLModel, col, select

from restate_recovery.redaction import redact_arguments, redact_text
from restate_recovery.settings import get_settings

Outcome = Literal["success", "failure"]
SYSTEM_OPERATE = "system:operate"
KEY_PREFIX = "rrk"


def utcnow() -> datetime:
    return datetime.now(UTC)


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
    *, session: Session, attempt: AuditCreate, started_at: datetime | None = None
) -> int:
    """Insert the row of an attempt that is starting; returns its id (committed at once)."""
    data = attempt.model_dump()
    data["arguments"] = redact_arguments(data["arguments"])
    data["reason"] = redact_text(data["reason"]) if data["reason"] else data["reason"]
    data["started_at"] = started_at or utcnow()
    # One prebuilt Core statement, parameters apart: building an ORM insert per call cost
    # about 2 ms of CPU on the doctor's answer path (it runs while the doctor probes).
    inserted = session.connection().execute(_insert_audit(), data)
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
) -> None:
    """Finish an attempt, once: a finished row is never changed again."""
    session.execute(
        sa.update(OperationAudit)
        .where(col(OperationAudit.id) == attempt_id)
        .where(col(OperationAudit.finished_at).is_(None))
        .values(
            finished_at=utcnow(),
            outcome=outcome,
            error=redact_arguments(error) if error else None,
            flow_run_id=flow_run_id,
        )
    )
    session.commit()


def list_attempts(*, session: Session, limit: int = 50) -> list[OperationAudit]:
    statement = select(OperationAudit).order_by(col(OperationAudit.id).desc()).limit(limit)
    return list(session.exec(statement))


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


def create_api_key(
    *, session: Session, actor: str, role: str, permissions: list[str]
) -> tuple[ApiKey, str]:
    """A new key; the plaintext (``rrk_<id>_<secret>``) is returned once and never stored."""
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
HEAD_REVISION = "0001"


def at_head(url: str) -> bool:
    """Whether the schema is already the newest, read without loading Alembic (which costs
    about 0.1 s of every CLI call otherwise)."""
    try:
        with engine_for(url).connect() as connection:
            versions = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            return [row[0] for row in versions] == [HEAD_REVISION]
    except sa.exc.DBAPIError:  # no such table yet: a new database
        return False


def engine() -> Engine:
    """The engine of the configured audit database (``RECOVERY_DATABASE_URL``), brought to the
    newest schema on first use in this process."""
    return _migrated(get_settings().recovery_database_url)


@cache
def _migrated(url: str) -> Engine:
    migrate(url)
    return engine_for(url)


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
