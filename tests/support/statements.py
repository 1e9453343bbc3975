"""Counting the round trips an engine makes: every statement SQLAlchemy sends, BEGIN and COMMIT
included (the driver's own pings are not). Used by tests/test_statement_counts.py and the
benchmarks in bench/. `refusing_outbox_rows` fails the writes of one kind of outbox row, for
tests that show a change and the message it owes commit together or not at all."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


class Statements:
    """Counts what the engines it watches send."""

    def __init__(self, *engines: AsyncEngine) -> None:
        self.count = 0
        for engine in engines:
            self.watch(engine)

    def watch(self, engine: AsyncEngine) -> None:
        for name in ("before_cursor_execute", "begin", "commit"):
            event.listen(engine.sync_engine, name, self._one)

    def _one(self, *_: object) -> None:
        self.count += 1


@contextmanager
def refusing_outbox_rows(engine: AsyncEngine, kind: str) -> Iterator[None]:
    """Fail every INSERT of an outbox row of `kind` on `engine`, as a database lost in the
    middle of the transaction that writes it would: what that transaction changed must go too."""

    def refuse(
        _conn: object,
        _cursor: object,
        statement: str,
        parameters: Any,
        _context: object,
        _executemany: bool,
    ) -> None:
        values = parameters.values() if isinstance(parameters, dict) else parameters or ()
        if statement.lstrip().upper().startswith("INSERT INTO OUTBOX") and kind in tuple(values):
            raise ConnectionError(f"the database went away writing a {kind!r} outbox row")

    event.listen(engine.sync_engine, "before_cursor_execute", refuse)
    try:
        yield
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", refuse)
