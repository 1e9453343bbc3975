"""weekly digests: one row per (team, channel, week) posted, and indexes for the metrics

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "digest_posts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("team", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("week", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("claimed_by", sa.String(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ts", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("team", "channel", "week", name="uq_digest_posts_team_channel_week"),
    )
    # The metrics read one period at a time: transitions, model calls and intake dialogues by time.
    op.create_index("ix_audit_events_kind_at", "audit_events", ["kind", "at"])
    op.create_index(
        "ix_llm_calls_created_at_cost",
        "llm_calls",
        ["created_at", "order_id", "team", "role", "model", "cost_micro_usd"],
    )
    op.create_index("ix_intake_sessions_created_at", "intake_sessions", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_intake_sessions_created_at", table_name="intake_sessions")
    op.drop_index("ix_llm_calls_created_at_cost", table_name="llm_calls")
    op.drop_index("ix_audit_events_kind_at", table_name="audit_events")
    op.drop_table("digest_posts")
