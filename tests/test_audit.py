"""The audit trail is a hash chain: it verifies when intact and names the first tampered event."""

from __future__ import annotations

import itertools
import json

from sqlalchemy import text

from tests.support.factories import make_order
from workers.audit import render_json, render_markdown
from workers.store import Store
from workers.workorder import Status


async def _order_with_history(store: Store) -> str:
    order = await store.create_order(make_order(), actor="U1")
    assert order.id
    await store.transition(order.id, Status.AWAITING_CONFIRMATION, actor="intake", reason="drafted")
    await store.transition(order.id, Status.QUEUED, actor="U1", reason="started")
    await store.audit(order.id, actor="worker-1", kind="note", data={"step": "reading thread"})
    return order.id


async def test_intact_chains_verify(store: Store) -> None:
    await _order_with_history(store)
    await _order_with_history(store)
    await store.audit("system", actor="admin", kind="config_loaded", data={})
    checked, breaks = await store.verify_audit()
    assert checked == 9 and breaks == []


async def test_each_event_links_to_the_previous_hash(store: Store) -> None:
    order_id = await _order_with_history(store)
    trail = await store.audit_trail(order_id)
    assert trail[0].prev_hash == "0" * 64
    for before, after in itertools.pairwise(trail):
        assert after.prev_hash == before.hash
    assert len({e.hash for e in trail}) == len(trail)


async def test_edited_row_is_detected_and_named(store: Store) -> None:
    order_id = await _order_with_history(store)
    trail = await store.audit_trail(order_id)
    victim = trail[2]
    async with store.engine.begin() as conn:
        await conn.execute(
            text("UPDATE audit_events SET actor = 'mallory' WHERE id = :id"), {"id": victim.id}
        )
    _, breaks = await store.verify_audit()
    assert len(breaks) == 1
    assert breaks[0].event_id == victim.id and breaks[0].chain == order_id
    assert "altered" in str(breaks[0]) and f"#{victim.id}" in str(breaks[0])


async def test_deleted_row_is_detected(store: Store) -> None:
    order_id = await _order_with_history(store)
    trail = await store.audit_trail(order_id)
    async with store.engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": trail[1].id})
    _, breaks = await store.verify_audit()
    assert [b.event_id for b in breaks] == [trail[2].id]


async def test_rehashed_forgery_still_breaks_the_next_link(store: Store) -> None:
    """Recomputing a tampered event's own hash is not enough: its successor no longer links."""
    from workers.audit import event_hash

    order_id = await _order_with_history(store)
    trail = await store.audit_trail(order_id)
    forged = trail[1]
    new_hash = event_hash(
        chain=forged.chain,
        seq=forged.seq,
        at=forged.at,
        actor="mallory",
        kind=forged.kind,
        data=forged.data,
        prev_hash=forged.prev_hash,
    )
    async with store.engine.begin() as conn:
        await conn.execute(
            text("UPDATE audit_events SET actor = 'mallory', hash = :h WHERE id = :id"),
            {"h": new_hash, "id": forged.id},
        )
    _, breaks = await store.verify_audit()
    assert [b.event_id for b in breaks] == [trail[2].id]


async def test_renderings(store: Store) -> None:
    order_id = await _order_with_history(store)
    trail = await store.audit_trail(order_id)
    md = render_markdown(order_id, trail)
    assert md.startswith(f"# Audit trail for {order_id}")
    assert "| 3 |" in md and "started" in md and trail[-1].hash in md
    doc = json.loads(render_json(order_id, trail))
    assert [e["kind"] for e in doc["events"]] == ["created", "transition", "transition", "note"]
    assert doc["events"][-1]["hash"] == trail[-1].hash
