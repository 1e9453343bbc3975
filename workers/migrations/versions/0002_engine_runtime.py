"""engine runtime: team quota weeks, deliverables, run bookkeeping columns, 64-bit money

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 07:37:55.469084
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "team_spend",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("team", sa.String(), nullable=False),
        sa.Column("week", sa.String(), nullable=False),
        sa.Column(
            "spent_micro_usd", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "reserved_micro_usd",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column(
            "quota_micro_usd", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("team", "week"),
    )
    op.create_table(
        "deliverables",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("attempt_id", sa.Integer(), nullable=True),
        sa.Column("tool_use_id", sa.String(), nullable=False),
        sa.Column("summary", sa.String(), nullable=False),
        sa.Column("content", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["attempt_id"],
            ["run_attempts.id"],
        ),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["work_orders.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("order_id", "tool_use_id"),
    )
    with op.batch_alter_table("deliverables", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deliverables_order_id"), ["order_id"], unique=False)

    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("reserved_tokens", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("team", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("quota_week", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("error", sa.String(), nullable=True))

    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("inbox", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("wait_reason", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("waiting_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("lost_leases", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("elapsed_ms", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("exception_kind", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("exception_message", sa.String(), nullable=True))

    if op.get_bind().dialect.name == "postgresql":
        # SQLite integers are already 64-bit; PostgreSQL INTEGER would cap an order at $2,147.
        for column in ("spent_micro_usd", "reserved_micro_usd"):
            op.alter_column("work_orders", column, type_=sa.BigInteger(), existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for column in ("spent_micro_usd", "reserved_micro_usd"):
            op.alter_column("work_orders", column, type_=sa.Integer(), existing_nullable=False)
    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.drop_column("exception_message")
        batch_op.drop_column("exception_kind")
        batch_op.drop_column("elapsed_ms")
        batch_op.drop_column("lost_leases")
        batch_op.drop_column("waiting_since")
        batch_op.drop_column("wait_reason")
        batch_op.drop_column("inbox")

    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.drop_column("error")
        batch_op.drop_column("quota_week")
        batch_op.drop_column("team")
        batch_op.drop_column("reserved_tokens")

    with op.batch_alter_table("deliverables", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliverables_order_id"))

    op.drop_table("deliverables")
    op.drop_table("team_spend")
