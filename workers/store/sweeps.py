"""Scheduled sweeps run on one process at a time.

Every `delegate run` process schedules the follow-up and digest sweeps; on one PostgreSQL
database only the process holding the sweep's advisory lock runs it, the others skip that round
(the sweeps are idempotent anyway: every message they post has a key). SQLite serves one
process by design, so there the sweep always runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


def lock_key(name: str) -> int:
    """A stable 63-bit advisory lock key for a sweep's name."""
    digest = hashlib.sha256(f"delegate sweep {name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


@asynccontextmanager
async def single_runner(engine: AsyncEngine, name: str) -> AsyncIterator[bool]:
    """True if this process may run the sweep `name` now (and holds it until the block ends)."""
    if engine.dialect.name != "postgresql":
        yield True
        return
    key = lock_key(name)
    async with engine.connect() as conn:
        got = bool(
            (await conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key})).scalar()
        )
        await conn.commit()  # the lock is the session's, not the transaction's
        try:
            yield got
        finally:
            if got:
                await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                await conn.commit()
