"""verification verdicts and revision counts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 08:37:27.825305
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliverables", schema=None) as batch_op:
        batch_op.add_column(sa.Column("verdicts", sa.JSON(), nullable=True))

    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("auto_revisions", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.drop_column("auto_revisions")

    with op.batch_alter_table("deliverables", schema=None) as batch_op:
        batch_op.drop_column("verdicts")
