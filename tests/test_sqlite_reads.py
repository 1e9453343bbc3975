"""SQLite (Reliability issue, item 7): reads do not take the write lock, so a read never waits
for, or fails behind, a writer; writers still take it up front (BEGIN IMMEDIATE)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.factories import make_order
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
