"""work_orders.wait_kind: why a queued order waits, as an enum rather than a sentence

The metrics told a quota wait from other waits by the wording of `wait_reason` (its opening
words), so rewording a message would have silently stopped the count. `wait_kind` says it
(workers.states.WaitKind: quota, slot, provider); `wait_reason` stays, as the words shown to
people. Orders waiting now are backfilled from the wordings used up to this revision.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 22:15:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The opening words each kind of wait was written with before this revision.
WORDINGS = {
    "quota": ("waiting for team quota", "the team's weekly quota is spent"),
    "slot": ("waiting for a free slot",),
    "provider": ("waiting for the model provider",),
}


def upgrade() -> None:
    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("wait_kind", sa.String(), nullable=True))
    _backfill()


def _backfill() -> None:
    orders = sa.table("work_orders", sa.column("wait_reason"), sa.column("wait_kind"))
    for kind, openings in WORDINGS.items():
        op.execute(
            orders.update()
            .where(sa.or_(*(orders.c.wait_reason.startswith(o) for o in openings)))
            .values(wait_kind=kind)
        )


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35+): batch mode would rebuild work_orders, which other
    # tables reference, and SQLite refuses that with foreign keys on.
    op.drop_column("work_orders", "wait_kind")
