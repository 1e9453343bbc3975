"""The ledger's hot paths (issue 13, benchmark 6): the audit total counts chains, so appends to
existing chains never touch a row shared by the whole system; a reservation that no longer fits
the team's week is refused, never charged; concurrent reservations on one small team quota hold
back exactly what fits."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from tests.support.databases import Database
from tests.support.factories import make_order
from workers.audit import ALL_CHAINS, TOTAL_COUNTS_CHAINS, AuditKey, head_mac
from workers.budget import CallPlan, Headroom, quota_week
from workers.errors import BudgetExceeded
from workers.models import LlmCall, utcnow
from workers.store import Store


async def _order(store: Store) -> int:
    order = await store.orders.create_order(make_order(), actor="U1")
    return int((order.id or "")[3:])


def _call(number: int) -> LlmCall:
    return LlmCall(order_id=number, role="execute", provider="anthropic", model="m")


async def test_the_total_moves_when_a_chain_starts_not_on_every_append(store: Store) -> None:
    first = await _order(store)
    total = (await store.audit.audit_heads())[ALL_CHAINS]
    assert total.last_hash == TOTAL_COUNTS_CHAINS
    for n in range(3):
        await store.audit.audit(f"WO-{first}", actor="worker", kind="note", data={"n": n})
    assert (await store.audit.audit_heads())[ALL_CHAINS] == total
    await _order(store)
    heads = await store.audit.audit_heads()
    assert heads[ALL_CHAINS].count == total.count + 1 == len(heads) - 1
    assert (await store.audit.verify_audit())[1] == []


async def test_a_total_that_counted_events_is_converted_and_still_catches_a_lost_chain(
    database: Database,
) -> None:
    key = AuditKey(b"k" * 32)
    writer = Store(database.engine(), audit_key=key)
    keep, gone = await _order(writer), await _order(writer)
    await writer.audit.audit(f"WO-{keep}", actor="worker", kind="note", data={})
    await writer.close()
    # The trail as the previous release left it: a total counting events.
    async with database.engine().begin() as conn:
        events = (
            await conn.execute(text("SELECT sum(count) FROM audit_heads WHERE chain != '*'"))
        ).scalar_one()
        await conn.execute(
            text("UPDATE audit_heads SET count = :n, last_hash = '', mac = :m WHERE chain = '*'"),
            {"n": int(events), "m": head_mac(key, ALL_CHAINS, int(events), "")},
        )
    store = Store(database.engine(), audit_key=key)
    assert (await store.audit.verify_audit())[1] == []  # the old total verifies as it is
    await store.audit.audit(f"WO-{keep}", actor="worker", kind="note", data={})  # converts it
    assert (await store.audit.audit_heads())[ALL_CHAINS].last_hash == TOTAL_COUNTS_CHAINS
    assert (await store.audit.verify_audit())[1] == []
    async with database.engine().begin() as conn:
        for table in ("audit_events", "audit_heads"):
            await conn.execute(text(f"DELETE FROM {table} WHERE chain = :c"), {"c": f"WO-{gone}"})
        await conn.execute(text("DELETE FROM work_orders WHERE id = :i"), {"i": gone})
    _, breaks = await store.audit.verify_audit()
    await store.close()
    assert [b.chain for b in breaks] == [ALL_CHAINS]
    assert "a whole chain was deleted" in str(breaks[0])


async def test_a_reservation_that_does_not_fit_the_team_is_refused_not_charged(
    store: Store,
) -> None:
    number = await _order(store)
    week = quota_week(utcnow())
    with pytest.raises(BudgetExceeded) as refused:
        await store.ledger.reserve_spend(
            number, team="default", week=week, quota_micro_usd=1_000,
            plan=lambda headroom: CallPlan(100, 1_001, 10), call=_call(number),
        )  # fmt: skip
    assert refused.value.limit == "team_quota"
    assert await store.ledger.team_week_used("default", week) == 0
    assert (await store.ledger.spend(number)).model_calls == 0  # the order was not charged either


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_concurrent_reservations_hold_back_exactly_what_fits_the_team(
    database: Database,
) -> None:
    """Eight workers (each its own pool) race for a week that fits ten of forty calls; the
    plan trusts the headroom it is shown, so a stale read would overspend."""
    stores = [Store(database.engine()) for _ in range(8)]
    week = quota_week(utcnow())
    numbers = [await _order(stores[0]) for _ in range(8)]

    def plan(headroom: Headroom) -> CallPlan:
        if headroom.team_micro_usd < 100:
            raise BudgetExceeded("team_quota", "spent")
        return CallPlan(10, 100, 1)

    async def worker(store: Store, number: int) -> int:
        got = 0
        for _ in range(5):
            try:
                await store.ledger.reserve_spend(
                    number, team="default", week=week, quota_micro_usd=1_000, plan=plan,
                    call=_call(number),
                )  # fmt: skip
                got += 1
            except BudgetExceeded:
                pass
        return got

    got = await asyncio.gather(*(worker(s, n) for s, n in zip(stores, numbers, strict=True)))
    assert sum(got) == 10
    assert await stores[0].ledger.team_week_used("default", week) == 1_000
    for s in stores:
        await s.close()
