"""feedback: Slack's thumbs up / down on deliverables and chat answers

One row per person and thing rated (an order, or the intake session that answered as chat): a
second press by the same person replaces their first, which the unique keys make atomic.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 04:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=True),
        sa.Column("intake_session_id", sa.Integer(), nullable=True),
        sa.Column("deliverable_id", sa.Integer(), nullable=True),
        sa.Column("user", sa.String(), nullable=False),
        sa.Column("rating", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["work_orders.id"]),
        sa.ForeignKeyConstraint(["intake_session_id"], ["intake_sessions.id"]),
        sa.ForeignKeyConstraint(["deliverable_id"], ["deliverables.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("order_id", "user", name="uq_feedback_order_user"),
        sa.UniqueConstraint("intake_session_id", "user", name="uq_feedback_session_user"),
        sa.CheckConstraint(
            "(order_id IS NULL) <> (intake_session_id IS NULL)", name="ck_feedback_one_subject"
        ),
    )
    op.create_index("ix_feedback_updated_at", "feedback", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_feedback_updated_at", table_name="feedback")
    op.drop_table("feedback")
