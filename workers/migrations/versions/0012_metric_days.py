"""metric_days: closed days of the leads' metrics, summarised once

Summing a year of model calls and transitions row by row took 3 to 5 s on SQLite. A UTC day's
figures stop changing once it is over and its model calls are settled; workers.metric_days
summarises each such day once into these tables, and a long period reads them instead of the
day's rows. Nothing is backfilled here: the scheduled sweep summarises past days on its first
run, and until then the figures come from the rows, as before.

The index on llm_calls(order_id) becomes (order_id, created_at, cost_micro_usd): what a period
cost on the orders that ended without approval is then read from the index, order by order.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27 23:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MICRO_USD = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "metric_days",
        sa.Column("day", sa.String(), nullable=False),
        sa.Column("summarised_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("day"),
    )
    op.create_table(
        "metric_day_spend",
        sa.Column("day", sa.String(), nullable=False),
        sa.Column("team", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("workload_class", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("micro_usd", MICRO_USD, nullable=False),
        sa.PrimaryKeyConstraint("day", "team", "role", "workload_class", "model"),
    )
    op.create_table(
        "metric_day_moves",
        sa.Column("day", sa.String(), nullable=False),
        sa.Column("team", sa.String(), nullable=False),
        sa.Column("from_status", sa.String(), nullable=False),
        sa.Column("to_status", sa.String(), nullable=False),
        sa.Column("exception_kind", sa.String(), nullable=False),
        sa.Column("moves", sa.Integer(), nullable=False),
        sa.Column("first_pass", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", "team", "from_status", "to_status", "exception_kind"),
    )
    op.create_table(
        "metric_day_people",
        sa.Column("day", sa.String(), nullable=False),
        sa.Column("team", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("confirmed", sa.Integer(), nullable=False),
        sa.Column("finished", sa.Integer(), nullable=False),
        sa.Column("decisions", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", "team", "user_id"),
    )
    op.create_table(
        "metric_day_durations",
        sa.Column("day", sa.String(), nullable=False),
        sa.Column("team", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("seconds", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("day", "team", "kind"),
    )
    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.drop_index("ix_llm_calls_order_id")
        batch_op.create_index(
            "ix_llm_calls_order_created_cost", ["order_id", "created_at", "cost_micro_usd"]
        )


def downgrade() -> None:
    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.drop_index("ix_llm_calls_order_created_cost")
        batch_op.create_index("ix_llm_calls_order_id", ["order_id"])
    for table in (
        "metric_day_durations",
        "metric_day_people",
        "metric_day_moves",
        "metric_day_spend",
        "metric_days",
    ):
        op.drop_table(table)
