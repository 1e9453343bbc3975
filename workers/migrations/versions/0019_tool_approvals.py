"""tool approvals: the domain prompt becomes one kind of approval of a tool call

`domain_approvals` is renamed `tool_approvals` and gains what any tool call needs to be asked
about: the kind ('domain' for the rows there are), the tool and its MCP server, and the call's
arguments (a capped copy and the SHA-256 of all of them). Tool calls record their MCP server and
who approved them.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    ("kind", sa.String(), "domain"),
    ("tool", sa.String(), "web_fetch"),
    ("arguments", sa.String(), ""),
    ("arguments_sha256", sa.String(), ""),
    ("arguments_chars", sa.Integer(), "0"),
)


def upgrade() -> None:
    op.drop_index(op.f("ix_domain_approvals_order_id"), table_name="domain_approvals")
    op.rename_table("domain_approvals", "tool_approvals")
    for name, type_, default in _COLUMNS:
        op.add_column(
            "tool_approvals",
            sa.Column(name, type_, nullable=False, server_default=default),
        )
    op.add_column("tool_approvals", sa.Column("server", sa.String(), nullable=True))
    op.create_index(
        op.f("ix_tool_approvals_order_id"), "tool_approvals", ["order_id"], unique=False
    )
    op.add_column("tool_calls", sa.Column("server", sa.String(), nullable=True))
    op.add_column("tool_calls", sa.Column("approver", sa.String(), nullable=True))


def downgrade() -> None:
    op.drop_column("tool_calls", "approver")
    op.drop_column("tool_calls", "server")
    op.drop_index(op.f("ix_tool_approvals_order_id"), table_name="tool_approvals")
    op.execute("DELETE FROM tool_approvals WHERE kind != 'domain'")
    for name in ("server", *(c[0] for c in _COLUMNS)):
        op.drop_column("tool_approvals", name)
    op.rename_table("tool_approvals", "domain_approvals")
    op.create_index(
        op.f("ix_domain_approvals_order_id"), "domain_approvals", ["order_id"], unique=False
    )
