"""Waking workers in other processes when an order is queued (PostgreSQL LISTEN/NOTIFY).

Migration 0021's trigger sends `NOTIFY delegate_queued` when a row of work_orders becomes
'queued', delivered at commit. `listen_for_queued` keeps one connection listening (its own,
outside the pool, so it never holds a pooled connection) and calls `on_queued` for each
notification. A lost connection is reopened with back-off, and every (re)connection calls
`on_queued` once, for what may have been queued while nobody listened. Polling remains the
fallback, and all there is on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from workers.db import is_sqlite

log = logging.getLogger(__name__)

QUEUED_CHANNEL = "delegate_queued"
RETRY_MIN_S, RETRY_MAX_S = 1.0, 30.0


def _dsn(engine: AsyncEngine) -> str:
    """asyncpg's own DSN for the engine's database (the SQLAlchemy driver suffix dropped)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


async def listen_for_queued(
    engine: AsyncEngine, on_queued: Callable[[], None], stop: asyncio.Event
) -> None:
    """Call `on_queued` whenever any process queues an order, until `stop` is set."""
    if is_sqlite(str(engine.url)):
        await stop.wait()
        return
    delay = RETRY_MIN_S
    while not stop.is_set():
        try:
            await _listen_once(engine, on_queued, stop)
            if stop.is_set():
                return
            delay = RETRY_MIN_S
            log.warning("queue notifications: connection lost; reconnecting (polling meanwhile)")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning(
                "queue notifications unavailable (%s); polling, retrying in %.0f s",
                type(exc).__name__,
                delay,
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()
        delay = min(delay * 2, RETRY_MAX_S)


async def _listen_once(
    engine: AsyncEngine, on_queued: Callable[[], None], stop: asyncio.Event
) -> None:
    """Listen on one connection until `stop` is set or the connection is lost."""
    lost = asyncio.Event()
    connection: Any = await asyncpg.connect(_dsn(engine), timeout=10)
    try:
        connection.add_termination_listener(lambda *_: lost.set())
        await connection.add_listener(QUEUED_CHANNEL, lambda *_: on_queued())
        on_queued()  # anything queued while nobody was listening
        waiting = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiting:
                task.cancel()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), 5)
