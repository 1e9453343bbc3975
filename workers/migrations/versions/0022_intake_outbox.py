"""intake_outbox: the intake dialogue's messages go through the outbox too

Clarifying questions, chat answers and the dialogue's notices are written in the transaction
that records them in the dialogue, and sent by the deliverer like every other message. Such a
message belongs to a dialogue (`intake_id`) that may not have an order yet, so `order_id`
becomes optional; a card belongs to both, which keeps it behind the dialogue's earlier replies.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07 12:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite rebuilds the table (batch mode); nothing references outbox, so it may.
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.alter_column("order_id", existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column("intake_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "fk_outbox_intake_id", "intake_sessions", ["intake_id"], ["id"]
        )
        batch_op.create_index("ix_outbox_intake_id", ["intake_id"])


def downgrade() -> None:
    op.execute("DELETE FROM outbox WHERE order_id IS NULL")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_intake_id")
        batch_op.drop_constraint("fk_outbox_intake_id", type_="foreignkey")
        batch_op.drop_column("intake_id")
        batch_op.alter_column("order_id", existing_type=sa.Integer(), nullable=False)
