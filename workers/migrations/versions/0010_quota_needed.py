"""orders waiting for quota remember what their next call must reserve

A run that stops because the team's week cannot cover its next call records that call's
minimal reservation; the claim passes the order over until that much quota is free, instead of
starting a run that can only wait again.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 20:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "quota_needed_micro_usd",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                nullable=True,
            )
        )


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35+): batch mode would rebuild work_orders, which other
    # tables reference, and SQLite refuses that with foreign keys on.
    op.drop_column("work_orders", "quota_needed_micro_usd")
