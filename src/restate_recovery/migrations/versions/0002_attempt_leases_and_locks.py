"""Attempt leases (who runs an open attempt, and until when it is known alive) and the per-target
write locks with short leases.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("operation_audit") as table:
        table.add_column(sa.Column("owner", sa.String(128), nullable=True))
        table.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_operation_audit_open", "operation_audit", ["finished_at", "lease_expires_at"]
    )
    op.create_table(
        "recovery_lock",
        sa.Column("target", sa.String(255), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("attempt_id", sa.Integer(), nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("recovery_lock")
    op.drop_index("ix_operation_audit_open", "operation_audit")
    with op.batch_alter_table("operation_audit") as table:
        table.drop_column("lease_expires_at")
        table.drop_column("owner")
