"""transitions: each order state change in a narrow, indexed table, backfilled from the audit trail

The leads' metrics read confirmation, review and approval times. Reading them from the audit
trail meant parsing every transition event's JSON; `Store._move` now also writes one row here
in the same transaction. Existing orders get their rows from their audit trail's transition
events (same seq, time and actor), so the figures for past weeks do not change. Quota waits
were not recorded before this revision, so backfilled rows carry none.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 19:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "transitions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("from_status", sa.String(), nullable=False),
        sa.Column("to_status", sa.String(), nullable=False),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exception_kind", sa.String(), nullable=True),
        sa.Column("quota_wait_s", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["order_id"], ["work_orders.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("order_id", "seq", name="uq_transitions_order_seq"),
    )
    # Covering: a period's transitions are read from the index alone.
    op.create_index(
        "ix_transitions_at",
        "transitions",
        [
            "at", "order_id", "from_status", "to_status", "seq", "actor", "entered_at",
            "exception_kind", "quota_wait_s",
        ],
    )  # fmt: skip
    op.create_index(
        "ix_transitions_order_to",
        "transitions",
        ["order_id", "to_status", "seq", "from_status", "at"],
    )
    # The metrics count a period's dialogues by kind and requester from the index alone.
    op.drop_index("ix_intake_sessions_created_at", table_name="intake_sessions")
    op.create_index(
        "ix_intake_sessions_created_at_kind",
        "intake_sessions",
        ["created_at", "kind", "requester"],
    )
    _backfill()


def _backfill() -> None:
    """One INSERT ... SELECT over the audit trail's transition events of existing orders."""
    if op.get_bind().dialect.name == "postgresql":
        src, dst, kind = "e.data->>'from'", "e.data->>'to'", "e.data->>'kind'"
    else:
        src, dst, kind = (f"json_extract(e.data, '$.{k}')" for k in ("from", "to", "kind"))
    # The CASE keeps PostgreSQL from casting chains such as 'system' to a number; LAG gives each
    # transition the time of the order's previous one (when it entered the state it leaves).
    op.execute(
        f"""
        INSERT INTO transitions
            (order_id, seq, at, actor, from_status, to_status, entered_at, exception_kind)
        SELECT order_id, seq, at, actor, src, dst,
               LAG(at) OVER (PARTITION BY order_id ORDER BY seq), xkind
        FROM (
            SELECT o.id AS order_id, e.seq, e.at, e.actor, {src} AS src, {dst} AS dst,
                   CASE WHEN {dst} = 'exception' THEN {kind} END AS xkind
            FROM audit_events e
            JOIN work_orders o ON o.id = CASE
                WHEN e.chain LIKE 'WO-%' THEN CAST(substr(e.chain, 4) AS INTEGER) END
            WHERE e.kind = 'transition'
        ) moves
        WHERE src IS NOT NULL AND dst IS NOT NULL
        ORDER BY order_id, seq
        """
    )


def downgrade() -> None:
    op.drop_index("ix_intake_sessions_created_at_kind", table_name="intake_sessions")
    op.create_index("ix_intake_sessions_created_at", "intake_sessions", ["created_at"])
    op.drop_index("ix_transitions_order_to", table_name="transitions")
    op.drop_index("ix_transitions_at", table_name="transitions")
    op.drop_table("transitions")
