"""Counting the round trips an engine makes: every statement SQLAlchemy sends, BEGIN and COMMIT
included (the driver's own pings are not). Used by tests/test_statement_counts.py and the
benchmarks in bench/."""

from __future__ import annotations

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
