"""An MCP server over one SQLite file, for Delegate's "Giving runs tools" walk-through.

    python examples/mcp_sqlite/server.py --db churn.db [--max-rows 200] [--max-chars 20000]
                                         [--timeout-s 10]

It speaks MCP over stdio (Delegate starts it as a subprocess) and offers five tools:

- `list_tables` and `describe_table` (read-only): what the database holds.
- `read_query` (read-only): one SELECT (or WITH … SELECT). Enforced three ways: the statement
  must start with SELECT or WITH, SQLite's authorizer refuses anything but reading while it
  runs, and the connection is opened read-only (`file:…?mode=ro`), so even a statement that
  slipped past both cannot change the file.
- `write_query` (destructive): one INSERT, UPDATE, DELETE or CREATE statement. Marked
  destructive, so Delegate asks before every call unless a policy says `allow`.
- `drop_table` (destructive): drops a table; a policy would normally `deny` it.

Results are JSON: `{"columns": [...], "rows": [[...], ...], "row_count": n, "truncated": bool}`,
at most `--max-rows` rows and `--max-chars` characters; a query running longer than
`--timeout-s` is stopped. Errors (bad SQL, a missing table, a refused statement) are tool
errors whose text says what went wrong, never a crash of the server.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, openWorldHint=False)
DESTRUCTIVE = ToolAnnotations(readOnlyHint=False, destructiveHint=True, openWorldHint=False)

# What the authorizer lets a read_query do: read tables and columns, call functions, recurse
# in a CTE. Everything else (writes, PRAGMA, ATTACH, temp tables) is refused by SQLite itself.
_READ_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)
_WRITE_VERBS = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COMMENTS = re.compile(r"(--[^\n]*(\n|$))|(/\*.*?(\*/|$))", re.DOTALL)


@dataclass(frozen=True)
class Limits:
    max_rows: int = 200
    max_chars: int = 20_000
    timeout_s: float = 10.0


class Warehouse:
    """The SQLite file and what the tools may do with it; one short connection per call."""

    def __init__(self, path: Path, limits: Limits | None = None) -> None:
        self.path = path.resolve()
        self.limits = limits or Limits()
        if not self.path.is_file():
            raise FileNotFoundError(f"no SQLite database at {self.path}")

    # -------------------------------------------------------------- connections

    @contextmanager
    def _connect(self, *, writable: bool) -> Iterator[sqlite3.Connection]:
        # mode=ro: SQLite refuses every write on this connection, whatever the statement says.
        # mode=rw: never creates a file a typo in --db would otherwise leave behind.
        uri = f"{self.path.as_uri()}?mode={'rw' if writable else 'ro'}"
        connection = sqlite3.connect(uri, uri=True, timeout=self.limits.timeout_s)
        deadline = time.monotonic() + self.limits.timeout_s
        # Called every 10,000 VM steps; a non-zero return interrupts the statement.
        connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            yield connection
        finally:
            connection.close()

    def _failed(self, exc: sqlite3.Error | sqlite3.Warning) -> ToolError:
        if isinstance(exc, sqlite3.OperationalError) and str(exc) == "interrupted":
            return ToolError(
                f"the query ran longer than {self.limits.timeout_s:g} s and was stopped; "
                "narrow it with WHERE, aggregate, or add LIMIT"
            )
        if isinstance(exc, sqlite3.DatabaseError) and "not authorized" in str(exc):
            return ToolError("read_query may only read: use write_query to change data")
        return ToolError(f"SQLite error: {exc}")

    # -------------------------------------------------------------- tools

    def list_tables(self) -> str:
        with self._connect(writable=False) as db:
            rows = db.execute(
                "SELECT name, type FROM sqlite_schema WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            ).fetchall()
        return json.dumps([{"name": name, "type": kind} for name, kind in rows])

    def describe_table(self, table: str) -> str:
        with self._connect(writable=False) as db:
            kind = self._kind(db, table)
            columns = db.execute(
                'SELECT name, type, "notnull", pk FROM pragma_table_info(?)', (table,)
            ).fetchall()
            [[count]] = db.execute(f'SELECT count(*) FROM "{table}"').fetchall()
        return json.dumps(
            {
                "name": table,
                "type": kind,
                "rows": count,
                "columns": [
                    {"name": n, "type": t or None, "not_null": bool(nn), "primary_key": bool(pk)}
                    for n, t, nn, pk in columns
                ],
            }
        )

    def read_query(self, query: str) -> str:
        verb = _first_word(query)
        if verb not in ("SELECT", "WITH"):
            raise ToolError(
                f"read_query runs one SELECT (or WITH … SELECT), not {verb or 'an empty query'}; "
                "use write_query to change data"
            )

        def authorize(action: int, *_: Any) -> int:
            return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY

        with self._connect(writable=False) as db:
            db.set_authorizer(authorize)
            try:
                cursor = db.execute(query)
                rows = cursor.fetchmany(self.limits.max_rows + 1)
            except (sqlite3.Error, sqlite3.Warning) as exc:  # Warning: several statements (<3.11)
                raise self._failed(exc) from exc
            columns = [d[0] for d in cursor.description or ()]
        truncated = len(rows) > self.limits.max_rows
        return self._table(columns, rows[: self.limits.max_rows], truncated)

    def write_query(self, query: str) -> str:
        verb = _first_word(query)
        if verb not in _WRITE_VERBS:
            allowed = ", ".join(_WRITE_VERBS)
            hint = " (use read_query)" if verb in ("SELECT", "WITH") else ""
            raise ToolError(
                f"write_query runs one {allowed} statement, not {verb or 'nothing'}{hint}"
            )
        with self._connect(writable=True) as db:
            try:
                with db:  # one transaction: committed, or rolled back on error
                    cursor = db.execute(query)
            except (sqlite3.Error, sqlite3.Warning) as exc:
                raise self._failed(exc) from exc
        return json.dumps({"rows_affected": max(cursor.rowcount, 0)})

    def drop_table(self, table: str) -> str:
        with self._connect(writable=True) as db:
            kind = self._kind(db, table)
            if kind != "table":
                raise ToolError(f"{table} is a {kind}, not a table")
            with db:
                db.execute(f'DROP TABLE "{table}"')
        return json.dumps({"dropped": table})

    # -------------------------------------------------------------- helpers

    def _kind(self, db: sqlite3.Connection, table: str) -> str:
        if not _NAME.fullmatch(table):
            raise ToolError(f"{table!r} is not a table name (letters, digits and _)")
        found = db.execute(
            "SELECT type FROM sqlite_schema WHERE name = ? AND type IN ('table', 'view')", (table,)
        ).fetchone()
        if found is None:
            raise ToolError(f"there is no table or view called {table}; list_tables shows them")
        return str(found[0])

    def _table(self, columns: list[str], rows: list[tuple[Any, ...]], truncated: bool) -> str:
        body: dict[str, Any] = {
            "columns": columns,
            "rows": [[_cell(value) for value in row] for row in rows],
            "row_count": len(rows),
            "truncated": truncated,
        }
        if truncated:
            body["note"] = (
                f"only the first {self.limits.max_rows} rows are shown; "
                "aggregate or add LIMIT for the rest"
            )
        text = json.dumps(body)
        # Over the size cap: drop rows from the end until it fits, and say so.
        while len(text) > self.limits.max_chars and body["rows"]:
            keep = max(0, len(body["rows"]) * self.limits.max_chars // len(text) - 1)
            body["rows"] = body["rows"][:keep]
            body["row_count"] = keep
            body["truncated"] = True
            body["note"] = (
                f"only the first {keep} rows fit in {self.limits.max_chars} characters; "
                "select fewer columns or rows"
            )
            text = json.dumps(body)
        return text


def _first_word(query: str) -> str:
    words = _COMMENTS.sub(" ", query).split(None, 1)
    return words[0].upper().rstrip(";(") if words else ""


def _cell(value: Any) -> Any:
    if isinstance(value, bytes):
        return f"<blob, {len(value)} bytes>"
    return value


def build_server(warehouse: Warehouse) -> MCPServer:
    server = MCPServer(
        "delegate-sqlite-example",
        instructions="A SQLite warehouse: list_tables, describe_table, then read_query.",
    )

    @server.tool(annotations=READ_ONLY)
    def list_tables() -> str:
        """The tables and views in the database, as JSON."""
        return warehouse.list_tables()

    @server.tool(annotations=READ_ONLY)
    def describe_table(table: str) -> str:
        """A table's or view's columns (name, type, not null, primary key) and row count."""
        return warehouse.describe_table(table)

    @server.tool(annotations=READ_ONLY)
    def read_query(query: str) -> str:
        """Run one SELECT statement (SQLite dialect) and return columns and rows as JSON.
        Results are capped; aggregate in SQL rather than fetching raw rows."""
        return warehouse.read_query(query)

    @server.tool(annotations=DESTRUCTIVE)
    def write_query(query: str) -> str:
        """Run one INSERT, UPDATE, DELETE or CREATE statement; returns the rows affected."""
        return warehouse.write_query(query)

    @server.tool(annotations=DESTRUCTIVE)
    def drop_table(table: str) -> str:
        """Drop a table and all its rows."""
        return warehouse.drop_table(table)

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, type=Path, help="the SQLite file (must exist)")
    parser.add_argument("--max-rows", type=int, default=Limits.max_rows, help="rows per result")
    parser.add_argument(
        "--max-chars", type=int, default=Limits.max_chars, help="characters per result"
    )
    parser.add_argument(
        "--timeout-s", type=float, default=Limits.timeout_s, help="longest a query may run"
    )
    args = parser.parse_args(argv)
    try:
        warehouse = Warehouse(args.db, Limits(args.max_rows, args.max_chars, args.timeout_s))
    except FileNotFoundError as exc:
        # stdout is the protocol channel: messages for people go to stderr.
        print(
            f"{exc}; create it with: python examples/mcp_sqlite/make_db.py {args.db}",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    build_server(warehouse).run("stdio")


if __name__ == "__main__":
    main()
