"""Claims of messages to send use the database's clock (issue 18, failure 3): a process whose
host clock runs 120 s ahead takes neither another process's live outbox claim nor its live
post claim, so it never sends the same message a second time."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from tests.support.databases import Database
from tests.support.factories import make_order
from workers import models
from workers.store import OutboxItem, Store

SKEW = timedelta(seconds=120)


@contextlib.contextmanager
def host_clock_ahead(monkeypatch: pytest.MonkeyPatch, skew: timedelta) -> Iterator[None]:
    """While inside, this process's wall clock reads `skew` ahead, wherever the store reads it."""
    real = models.utcnow

    def ahead() -> datetime:
        return real() + skew

    with monkeypatch.context() as patch:
        for name, module in list(sys.modules.items()):
            if name.startswith("workers.") and getattr(module, "utcnow", None) is real:
                patch.setattr(module, "utcnow", ahead)
        yield


async def _order_id(store: Store) -> str:
    order = await store.orders.create_order(make_order(), actor="U1")
    assert order.id
    return order.id


async def test_a_host_clock_ahead_does_not_take_a_live_outbox_claim(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    right, skewed = Store(database.engine()), Store(database.engine())
    try:
        order_id = await _order_id(right)
        await right.outbox.add_to_outbox(order_id, [OutboxItem("question", f"{order_id}:question:1")])
        [claimed] = await right.outbox.claim_outbox("right", claim_s=60)  # sending it now

        with host_clock_ahead(monkeypatch, SKEW):
            taken = await skewed.outbox.claim_outbox("skewed", claim_s=60)

        assert [m.key for m in taken] == []  # would be sent a second time
        [row] = await right.outbox.outbox(order_id)
        assert (row.claimed_by, row.attempts) == ("right", 1)
        # Once the message is sent and a later one is retried, a clock ahead still waits.
        assert claimed.id is not None
        await right.outbox.outbox_sent(claimed.id)
        await right.outbox.add_to_outbox(order_id, [OutboxItem("question", f"{order_id}:question:2")])
        [second] = await right.outbox.claim_outbox("right", claim_s=60)
        assert second.id is not None
        with host_clock_ahead(monkeypatch, -SKEW):  # a clock behind backs off as long
            await skewed.outbox.outbox_retry(second.id, after_s=60, error="slack is down")
        assert await right.outbox.claim_outbox("right") == []
    finally:
        await right.close()
        await skewed.close()


async def test_a_host_clock_ahead_does_not_take_a_live_post_claim(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    right, skewed = Store(database.engine()), Store(database.engine())
    try:
        order_id = await _order_id(right)
        key = f"{order_id}:result:1"
        state, _ = await right.slack.claim_slack_message(
            key=key, purpose="result", channel="C1", owner="right", order=order_id, claim_s=60
        )
        assert state == "claimed"  # posting it now

        with host_clock_ahead(monkeypatch, SKEW):
            state, row = await skewed.slack.claim_slack_message(
                key=key, purpose="result", channel="C1", owner="skewed", order=order_id, claim_s=60
            )

        assert state == "busy", state  # "retaken" would look for the post, miss it, post again
        assert row.claimed_by == "right"
    finally:
        await right.close()
        await skewed.close()
