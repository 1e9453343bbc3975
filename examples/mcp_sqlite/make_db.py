"""Create the walk-through's sample warehouse: `python examples/mcp_sqlite/make_db.py churn.db`.

Runs churn.sql (next to this file) into a new SQLite file; an existing file is left alone, so a
warehouse someone has written to is never silently replaced.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

SQL = Path(__file__).with_name("churn.sql")


def make_db(path: Path) -> None:
    if path.exists():
        raise FileExistsError(f"{path} already exists; remove it first to rebuild it")
    connection = sqlite3.connect(path)
    try:
        connection.executescript(SQL.read_text())
    except BaseException:
        connection.close()
        path.unlink()  # no half-built warehouse
        raise
    connection.close()


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python examples/mcp_sqlite/make_db.py PATH (e.g. churn.db)")
    path = Path(sys.argv[1])
    try:
        make_db(path)
    except FileExistsError as exc:
        raise SystemExit(str(exc)) from None
    print(f"created {path} (subscriptions to 2026-09-30; see the quarterly_churn view)")


if __name__ == "__main__":
    main()
