"""The one place that reads and writes the database. Every state change is audited in the same
transaction as the change itself, so the trail cannot miss a step that happened.

A `Store` is the composition root of the repositories, one per concern, over one shared
`Database` (workers.store.base): `orders` (and their transitions), `runs`, `queue` (claims and
leases), `ledger` (spend and quota), `slack` (Slack bookkeeping), `outbox`, `approvals`,
`audit`, `rate_limits`, `feedback` (Slack's 👍 / 👎 presses) and `reporting` (what people
read). Callers name the repository they use (`store.orders.get_order(...)`), so what a piece of code touches is visible at the call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Self

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from workers.audit import AuditKey
from workers.config import Settings
from workers.db import create_engine
from workers.store.approvals import ApprovalsStore
from workers.store.audit import AuditStore
from workers.store.base import Database, OrderRef, as_utc, row_to_order
from workers.store.feedback import FeedbackStore, Pressed
from workers.store.notify import listen_for_queued
from workers.store.orders import EDITABLE_FIELDS, OrdersStore
from workers.store.outbox import OutboxItem, OutboxStore, Undelivered
from workers.store.queue import Admission, Claim, QueueStore
from workers.store.rate_limits import RateLimitsStore
from workers.store.reporting import Reporting
from workers.store.runs import RunsStore
from workers.store.slack import SlackStore
from workers.store.spend import SpendStore
from workers.store.sweeps import single_runner

__all__ = [
    "EDITABLE_FIELDS",
    "Admission",
    "Claim",
    "OrderRef",
    "OutboxItem",
    "Pressed",
    "Store",
    "Undelivered",
    "as_utc",
    "row_to_order",
]


class Store:
    """The repositories of one database, sharing its engine, sessions and audit key."""

    def __init__(self, engine: AsyncEngine, *, audit_key: AuditKey | None = None) -> None:
        self.db = Database(engine, audit_key=audit_key)
        self.orders = OrdersStore(self.db)
        self.runs = RunsStore(self.db)
        self.queue = QueueStore(self.db)
        self.ledger = SpendStore(self.db)
        self.slack = SlackStore(self.db)
        self.outbox = OutboxStore(self.db)
        self.approvals = ApprovalsStore(self.db)
        self.audit = AuditStore(self.db)
        self.rate_limits = RateLimitsStore(self.db)
        self.feedback = FeedbackStore(self.db)
        self.reporting = Reporting(engine)

    @classmethod
    def from_url(cls, url: str, *, audit_key: AuditKey | None = None) -> Self:
        return cls(create_engine(url), audit_key=audit_key)

    @classmethod
    def for_settings(cls, settings: Settings) -> Self:
        """The store as a deployment configures it: its database and its audit key."""
        return cls.from_url(settings.database_url, audit_key=settings.audit_signing_key())

    @property
    def engine(self) -> AsyncEngine:
        return self.db.engine

    @property
    def audit_key(self) -> AuditKey:
        return self.db.audit_key

    def transaction(self) -> AbstractAsyncContextManager[AsyncSession]:
        """One writing transaction across repositories (each takes the session it runs in)."""
        return self.db.transaction()

    def on_queued(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` each time a transaction of this store has queued an order, once it
        has committed (so that a worker in this process claims it now rather than at its next
        poll); returns what removes it. Other processes still find the order by polling."""
        self.db.queued_listeners.append(listener)
        return lambda: self.db.queued_listeners.remove(listener)

    async def listen_for_queued(self, on_queued: Callable[[], None], stop: asyncio.Event) -> None:
        """Call `on_queued` when any process queues an order (PostgreSQL NOTIFY), until `stop`;
        on SQLite only this process's own queueings wake it (`on_queued`)."""
        await listen_for_queued(self.engine, on_queued, stop)

    def on_outbox(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` after each committed transaction of this store that wrote outbox
        rows (so this process's deliverer sends them now); returns what removes it. Other
        processes' deliverers find them by polling."""
        self.db.outbox_listeners.append(listener)
        return lambda: self.db.outbox_listeners.remove(listener)

    async def ping(self) -> None:
        async with self.db.sessions() as session:
            await session.exec(select(1))

    async def upgrade(self, *, wait_s: float = 0.0) -> None:
        """Migrate the schema to the latest revision, waiting up to `wait_s` for a database that
        is still starting (workers.migrate.upgrade_when_reachable)."""
        from workers.migrate import upgrade_when_reachable  # Alembic only where it migrates

        await upgrade_when_reachable(self.engine, wait_s=wait_s)

    def single_runner(self, name: str) -> AbstractAsyncContextManager[bool]:
        """True inside for the one process that runs the sweep `name` now (PostgreSQL)."""
        return single_runner(self.engine, name)

    async def close(self) -> None:
        await self.engine.dispose()
