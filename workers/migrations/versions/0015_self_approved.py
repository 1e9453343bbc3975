"""self_approved: an order approved by its own requester is recorded and counted as such

- work_orders gains `self_approved`, shown on the card, App Home and `delegate show`.
- A requester's approval moves into approved with `exception_kind` 'self_approved' (the column
  qualifies a move), so the digest counts self-approved outcomes apart.

Approvals made before this revision by the order's own requester are marked the same way, and
the daily summaries are forgotten so that the scheduled sweep summarises them again with the
marks (until then the figures come from the rows, as in migration 0013).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 23:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SUMMARIES = (
    "metric_day_durations",
    "metric_day_people",
    "metric_day_moves",
    "metric_day_spend",
    "metric_days",
)


def _mark_self_approvals() -> None:
    """Mark the approvals an order's own requester made, on the move and on the order."""
    op.execute(
        sa.text(
            "UPDATE transitions SET exception_kind = 'self_approved' "
            "WHERE to_status = 'approved' AND actor = "
            "(SELECT requester FROM work_orders WHERE work_orders.id = transitions.order_id)"
        )
    )
    op.execute(
        sa.text(
            "UPDATE work_orders SET self_approved = TRUE WHERE status = 'approved' AND EXISTS "
            "(SELECT 1 FROM transitions WHERE transitions.order_id = work_orders.id "
            "AND transitions.exception_kind = 'self_approved')"
        )
    )


def upgrade() -> None:
    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("self_approved", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    _mark_self_approvals()
    for table in _SUMMARIES:
        op.execute(sa.text(f"DELETE FROM {table}"))


def downgrade() -> None:
    op.execute(
        sa.text(
            "UPDATE transitions SET exception_kind = NULL WHERE exception_kind = 'self_approved'"
        )
    )
    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.drop_column("self_approved")
    for table in _SUMMARIES:
        op.execute(sa.text(f"DELETE FROM {table}"))
