"""intake_slots: one row per intake request admitted, taken before the model is called

The hourly intake limit used to count the intake model calls already recorded, which are
written after the call returns: concurrent requests all saw room and all called the model. A
request now takes a slot in the same transaction that counts them, serialised per person.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 22:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "intake_slots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("requester", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_intake_slots_requester_created_at", "intake_slots", ["requester", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_intake_slots_requester_created_at", table_name="intake_slots")
    op.drop_table("intake_slots")
