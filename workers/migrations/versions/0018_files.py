"""files: files handed in with a deliverable, and files attached to thread messages

- deliverable_files keeps each file a run hands in with submit_deliverable (CSV, Markdown, PNG,
  PDF), with its size and sha256, so the delivery road can upload it and the audit names it.
- thread_messages gains `files`: what Slack said was attached to a message (id, name, type,
  size), so a run granted read_file can read what its requester attached.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-08 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deliverable_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deliverable_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("mimetype", sa.String(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["deliverable_id"], ["deliverables.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("deliverable_id", "position"),
    )
    op.create_index("ix_deliverable_files_deliverable_id", "deliverable_files", ["deliverable_id"])
    with op.batch_alter_table("thread_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("files", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("thread_messages", schema=None) as batch_op:
        batch_op.drop_column("files")
    op.drop_index("ix_deliverable_files_deliverable_id", table_name="deliverable_files")
    op.drop_table("deliverable_files")
