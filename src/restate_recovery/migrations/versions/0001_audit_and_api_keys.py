"""The operations audit table and the API keys.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operation_audit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("actor_user_id", sa.String(255), nullable=False),
        sa.Column("role_at_time", sa.String(255), nullable=True),
        sa.Column("route", sa.String(255), nullable=False),
        sa.Column("arguments", sa.JSON(), nullable=False),
        sa.Column("reason", sa.String(2000), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
    )
    op.create_index("ix_operation_audit_started_at", "operation_audit", ["started_at"])
    op.create_index("ix_operation_audit_actor", "operation_audit", ["actor_user_id"])
    op.create_table(
        "api_key",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("actor_user_id", sa.String(255), nullable=False),
        sa.Column("role", sa.String(255), nullable=False),
        sa.Column("permissions", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("api_key")
    op.drop_index("ix_operation_audit_actor", "operation_audit")
    op.drop_index("ix_operation_audit_started_at", "operation_audit")
    op.drop_table("operation_audit")
