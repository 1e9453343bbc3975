"""intake calls: who they served, so they can be rate-limited per user and charged to a team

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 17:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.add_column(sa.Column("requester", sa.String(), nullable=True))
    op.create_index(
        "ix_llm_calls_requester_created_at", "llm_calls", ["requester", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_llm_calls_requester_created_at", table_name="llm_calls")
    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.drop_column("requester")
