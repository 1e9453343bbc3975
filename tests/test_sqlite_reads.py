"""SQLite (Reliability issue, item 7): reads do not take the write lock, so a read never waits
for, or fails behind, a writer; writers still take it up front (BEGIN IMMEDIATE)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sqlite3
import threading
from pathlib import Path

from sqlalchemy import event, text

from tests.support.factories import make_order
from tests.support.waiting import DEADLINE_S, eventually
from workers.db import create_engine
from workers.migrate import upgrade
from workers.store import Store
from workers.workorder import Status


async def test_a_read_during_a_long_write_does_not_wait_for_the_lock(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'delegate.db'}"
    engine = create_engine(url)
    await upgrade(engine)
    store = Store(engine)
    order = await store.orders.create_order(make_order(status=Status.AWAITING_CONFIRMATION), actor="U1")
    writing, read_done = asyncio.Event(), asyncio.Event()

    async def long_write() -> None:
        async with store.transaction() as s:  # holds SQLite's write lock until it commits
            row = await store.orders._row(s, order.id or "", for_update=True)
            row.title = "renamed while a read happens"
            s.add(row)
            await s.flush()
            writing.set()
            await read_done.wait()

    writer = asyncio.create_task(long_write())
    try:
        await writing.wait()
        # Behind a writer a read that asked for the write lock would wait out the busy timeout
        # and fail with "database is locked"; a plain read sees the last committed state.
        seen = await store.orders.get_order(order.id or "")
        assert seen.title == order.title
        assert [o.id for o in await store.orders.list_orders(requester="U1")] == [order.id]
    finally:
        read_done.set()
        await writer
    assert (await store.orders.get_order(order.id or "")).title == "renamed while a read happens"
    await store.close()


async def test_a_write_cancelled_inside_the_driver_does_not_keep_the_write_lock(
    tmp_path: Path,
) -> None:
    """A transaction cancelled while a statement runs in the driver's thread (a worker shutting
    down mid-claim, an order cancelled mid-step) has its connection closed with that statement
    unfinished, held by a cursor in the cancelled task's traceback. SQLite keeps such a
    connection's transaction, and with it the write lock, until the cursor is garbage-collected:
    until then every writer, the whole bot, got "database is locked"."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'delegate.db'}"
    engine = create_engine(url)
    await upgrade(engine)
    store = Store(engine)
    order = await store.orders.create_order(make_order(), actor="U1")
    entered, release = threading.Event(), threading.Event()

    def hold() -> int:  # a statement that is still running in the driver's thread
        entered.set()
        release.wait(DEADLINE_S)
        return 1

    event.listen(
        engine.sync_engine,
        "connect",
        lambda dbapi_connection, _record: dbapi_connection.create_function("hold", 0, hold),
    )
    await engine.dispose()  # connections made from now on know hold()

    async def rename() -> None:
        async with store.transaction() as s:
            row = await store.orders._row(s, order.id or "", for_update=True)
            row.title = "never committed"
            s.add(row)
            await s.flush()  # the write lock is ours
            await s.exec(text("SELECT hold()"))  # type: ignore[call-overload]

    gc.disable()  # what holds the cursor is a reference cycle: collected some time, not now
    try:
        writer = asyncio.create_task(rename())
        await eventually(entered.is_set)
        writer.cancel()
        release.set()
        with contextlib.suppress(asyncio.CancelledError):
            await writer

        # Nobody is writing: another writer gets the lock without waiting.
        await eventually(lambda: _lock_is_free(tmp_path / "delegate.db"))
        assert (await store.orders.get_order(order.id or "")).title == order.title
    finally:
        release.set()
        gc.enable()
        await store.close()


def _lock_is_free(path: Path) -> bool:
    probe = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.rollback()
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()
