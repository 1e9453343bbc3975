"""Slack deliveries are kept until handled, so that one a dying process dropped is handled later

`slack_events_seen` recorded a delivery before its listener ran: a process that died during
intake lost it for good (Slack does not resend what was acknowledged). A delivery Delegate acts
on now keeps its body until its listener finishes; a sweep replays those left unfinished and
prunes what is older than Slack's retry window. Existing rows count as handled.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27 20:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("slack_events_seen", schema=None) as batch_op:
        batch_op.add_column(sa.Column("body", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("handled_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("attempts", sa.Integer(), nullable=False, server_default="1")
        )
        batch_op.create_index("ix_slack_events_seen_received_at", ["received_at"])
    op.execute("UPDATE slack_events_seen SET handled_at = received_at")


def downgrade() -> None:
    with op.batch_alter_table("slack_events_seen", schema=None) as batch_op:
        batch_op.drop_index("ix_slack_events_seen_received_at")
        batch_op.drop_column("attempts")
        batch_op.drop_column("handled_at")
        batch_op.drop_column("body")
