"""queued_notify: PostgreSQL tells listening workers when an order is queued

A trigger on work_orders sends NOTIFY delegate_queued whenever a row becomes (or is inserted
as) 'queued', from whichever process and path queued it; the notification is delivered when
that transaction commits, and not at all if it rolls back. Workers LISTEN on the channel
(workers.store.notify) and claim at once instead of at their next poll. SQLite has no NOTIFY:
nothing changes there, and polling stays the fallback everywhere.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 05:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE OR REPLACE FUNCTION delegate_notify_queued() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('delegate_queued', NEW.team);
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        """
        CREATE TRIGGER work_orders_queued_notify
        AFTER INSERT OR UPDATE OF status ON work_orders
        FOR EACH ROW WHEN (NEW.status = 'queued')
        EXECUTE FUNCTION delegate_notify_queued()
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS work_orders_queued_notify ON work_orders")
    op.execute("DROP FUNCTION IF EXISTS delegate_notify_queued()")
