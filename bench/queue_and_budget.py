"""Throughput of the engine's database paths: claims and budget reservations.

    python -m bench.queue_and_budget [--url postgresql+asyncpg://postgres@127.0.0.1:5432/test]
                                     [--orders 300] [--claimers 8]

Creates a scratch database (a SQLite file, or a fresh PostgreSQL database next to the one in
--url), then prints claims per second with several concurrent claimers (each on its own
connection pool, as separate worker processes would be) and reserve-plus-settle pairs per
second with concurrent runs drawing on one team quota, each with the SQL statements it took
(BEGIN and COMMIT included; the driver's pings are not). Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.support.statements import Statements
from workers import queue
from workers.budget import BudgetGuard, quota_week, usd_to_micro
from workers.config import Settings, load_settings
from workers.db import create_engine, is_sqlite
from workers.migrate import upgrade
from workers.models import utcnow
from workers.providers import Usage
from workers.store import Store
from workers.workorder import Budget, Status, WorkOrder


def _order(n: int) -> WorkOrder:
    return WorkOrder(
        title=f"bench {n}",
        requester=f"U{n % 50}",
        channel="C1",
        thread_ts="1.0",
        goal="bench",
        deliverable="bench",
        acceptance_criteria=["bench"],
        budget=Budget(max_usd=5, max_tokens=10_000_000, max_wall_clock_s=600, max_tool_calls=100),
        status=Status.AWAITING_CONFIRMATION,
    )


async def _scratch_database(url: str | None) -> tuple[str, str | None]:
    """A migrated scratch database; returns its URL and, for PostgreSQL, its name to drop."""
    if url is None or is_sqlite(url):
        path = Path(tempfile.mkdtemp()) / "bench.db"
        scratch = f"sqlite+aiosqlite:///{path}"
        name = None
    else:
        name = f"bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        await admin.dispose()
        scratch = make_url(url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(scratch)
    await upgrade(engine)
    await engine.dispose()
    return scratch, name


async def _drop(url: str, name: str | None) -> None:
    if name is None:
        return
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.dispose()


async def bench_claims(url: str, settings: Settings, *, orders: int, claimers: int) -> None:
    store = Store.from_url(url)
    for n in range(orders):
        created = await store.orders.create_order(_order(n), actor="bench")
        await queue.enqueue(store, settings, created.id or "", actor="bench")
    stores = [Store.from_url(url) for _ in range(claimers)]
    statements = Statements()
    for s in stores:
        statements.watch(s.engine)

    async def claimer(s: Store, name: str) -> int:
        got = 0
        while (await queue.claim(s, settings, name)).order is not None:
            got += 1
        return got

    started = time.perf_counter()
    counts = await asyncio.gather(*(claimer(s, f"w{i}") for i, s in enumerate(stores)))
    elapsed = time.perf_counter() - started
    print(
        f"claims: {sum(counts)} orders by {claimers} claimers in {elapsed:.2f} s "
        f"= {sum(counts) / elapsed:.0f} claims/s (spread {min(counts)}..{max(counts)}; "
        f"{statements.count / max(1, sum(counts)):.1f} statements per claim)"
    )
    for s in [store, *stores]:
        await s.close()


async def bench_reservations(url: str, settings: Settings, *, runs: int, calls: int) -> None:
    store = Store.from_url(url)
    await store.ledger.set_team_quota(
        "default", quota_week(utcnow()), quota_micro_usd=usd_to_micro(1_000_000), actor="bench"
    )
    guards = []
    for n in range(runs):
        created = await store.orders.create_order(_order(n), actor="bench")
        guards.append(
            BudgetGuard(
                store.ledger,
                settings,
                order_number=int((created.id or "")[3:]),
                team="default",
                budget=created.budget,
            )
        )

    statements = Statements()
    statements.watch(store.engine)

    async def run(guard: BudgetGuard) -> None:
        for _ in range(calls):
            reservation = await guard.reserve(
                role="execute",
                provider="anthropic",
                model="claude-sonnet-4-6",
                input_tokens=2_000,
                want_output_tokens=1_000,
            )
            await guard.settle(
                reservation, usage=Usage(1_500, 300, 0, 0), outcome="ok", latency_ms=0
            )

    started = time.perf_counter()
    await asyncio.gather(*(run(g) for g in guards))
    elapsed = time.perf_counter() - started
    pairs = runs * calls
    print(
        f"budget: {pairs} reserve+settle pairs from {runs} concurrent runs on one team quota "
        f"in {elapsed:.2f} s = {pairs / elapsed:.0f} pairs/s "
        f"({statements.count / pairs:.1f} statements per pair)"
    )
    await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default=None, help="PostgreSQL URL (default: a SQLite file)")
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--claimers", type=int, default=8)
    args = parser.parse_args()
    scratch, name = await _scratch_database(args.url)
    settings = load_settings(
        database_url=scratch,
        teams={"default": {"weekly_usd": 1_000_000.0, "max_concurrent_runs_per_user": 1_000}},
    )
    print(f"database: {make_url(scratch).get_backend_name()}")
    try:
        await bench_claims(scratch, settings, orders=args.orders, claimers=args.claimers)
        await bench_reservations(scratch, settings, runs=args.claimers, calls=50)
    finally:
        await _drop(args.url or "", name)


if __name__ == "__main__":
    asyncio.run(main())
