"""digest figures: reviewers' approvals per day, and when Delegate was installed

- metric_day_people gains `approvals` (review decisions that approved), so the digest can say
  how many finished outcomes each top reviewer signed off. Summarised days did not keep it, so
  they are forgotten here: the scheduled sweep summarises them again on its next run, and until
  then the figures come from the rows, as before migration 0012.
- `installation` holds one row: when this database was first migrated. Scheduled digests are
  never posted for weeks that ended before Delegate was installed (or before its earliest data,
  for a database that had data before this revision).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 21:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SUMMARIES = (
    "metric_day_durations",
    "metric_day_people",
    "metric_day_moves",
    "metric_day_spend",
    "metric_days",
)


def upgrade() -> None:
    for table in _SUMMARIES:
        op.execute(sa.text(f"DELETE FROM {table}"))
    with op.batch_alter_table("metric_day_people", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("approvals", sa.Integer(), nullable=False, server_default="0")
        )
    installation = op.create_table(
        "installation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("installed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(installation, [{"id": 1, "installed_at": datetime.now(UTC)}])


def downgrade() -> None:
    op.drop_table("installation")
    with op.batch_alter_table("metric_day_people", schema=None) as batch_op:
        batch_op.drop_column("approvals")
