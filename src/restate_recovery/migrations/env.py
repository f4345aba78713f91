"""Alembic environment: runs on the connection handed over by ``store.migrate``. Alembic runs
this file as a script during an upgrade; imported anywhere else it does nothing."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from restate_recovery import store  # noqa: F401  (registers the tables)

if getattr(context, "config", None) is not None:  # only while Alembic runs it
    context.configure(
        connection=context.config.attributes["connection"], target_metadata=SQLModel.metadata
    )
    with context.begin_transaction():
        context.run_migrations()
