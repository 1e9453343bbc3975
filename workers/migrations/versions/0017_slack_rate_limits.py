"""slack_rate_limits: a Slack Web API method held after a 429, for every process

Slack's rate limits are per app, workspace and method, so a 429 one process sees applies to all
of them. The process that got it writes `blocked_until` (the database's clock plus Retry-After)
and the others read it before calling that method.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "slack_rate_limits",
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("blocked_until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("method"),
    )


def downgrade() -> None:
    op.drop_table("slack_rate_limits")
