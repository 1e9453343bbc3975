"""Tight loops and leaks (Reliability issue, item 6): waiting for quota backs off, a cancel
releases what a dead worker's run held, a resumed run gets a fresh step allowance, and a run
cannot stop half-way between verifying and awaiting review."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlmodel import col

from tests.fakes.anthropic import Reply
from tests.support.engine import Harness
from tests.support.records import attempts, llm_calls, team_spend
from workers import queue
from workers.budget import CallPlan, quota_week, usd_to_micro
from workers.models import LlmCall, WorkOrderRow, utcnow
from workers.store import as_utc
from workers.workorder import Status, Verification


class _Killed(BaseException):
    """The process dying (nothing in the run catches it)."""


def _engine(h: Harness, **changes: object) -> None:
    h.settings = h.settings.model_copy(
        update={"engine": h.settings.engine.model_copy(update=changes)}
    )


async def test_cancelling_an_order_whose_worker_died_releases_its_reservation_and_lease(
    harness: Harness,
) -> None:
    h = harness
    order = await h.order()
    number = int((order.id or "")[3:])
    week = quota_week(utcnow())
    claim = await queue.claim(h.store, h.settings, "dead-worker")
    assert claim.attempt is not None
    # The worker died with a model call in flight: its reservation is still held.
    await h.store.ledger.reserve_spend(
        number, team="default", week=week, quota_micro_usd=usd_to_micro(100),
        plan=lambda _: CallPlan(100, 5000, 600),
        call=LlmCall(order_id=number, attempt_id=claim.attempt.id, role="execute",
                     provider="anthropic", model="m"),
    )  # fmt: skip

    await queue.cancel(h.store, order.id or "", actor="U1")

    row = await h.store.orders.get_row(order.id or "")
    assert row.status == Status.CANCELLED.value
    assert (row.lease_owner, row.lease_expires_at) == (None, None)
    assert (row.reserved_micro_usd, row.reserved_tokens) == (0, 0)
    assert row.spent_micro_usd == 5000  # usage unknown: charged the worst case, once
    spend = await team_spend(h.store, "default", week)
    assert spend is not None and (spend.reserved_micro_usd, spend.spent_micro_usd) == (0, 5000)
    [call] = await llm_calls(h.store, order.id or "")
    assert call.outcome == "interrupted"
    [attempt] = await attempts(h.store, order.id or "")
    assert attempt.ended_at is not None and attempt.outcome == "cancelled"


async def test_retry_of_a_stalled_order_gets_a_fresh_step_allowance(harness: Harness) -> None:
    h = harness
    _engine(h, max_steps=2)
    order = await h.order()
    h.anthropic.script(Reply.tool("read_thread", {}), Reply.tool("read_thread", {}))
    first = await h.run_next()
    assert first is not None and first.kind == "exception"
    row = await h.store.orders.get_row(order.id or "")
    assert row.exception_kind == "stalled"

    await h.store.queue.resume_from_exception(order.id or "", priority=1, actor="U1", reason="Retry")
    h.anthropic.script(Reply.tool("submit_deliverable", {"content": "done", "summary": "done"}))
    second = await h.run_next()

    assert second is not None and second.kind == "done", second
    assert len(h.anthropic.requests) == 3  # the retry asked the model again
    assert (await h.store.orders.get_order(order.id or "")).status == Status.AWAITING_REVIEW


async def test_a_team_at_its_quota_backs_off_and_is_told_once(harness: Harness) -> None:
    h = harness
    _engine(h, quota_headroom_usd=0, max_quota_wait_s=600)
    week = quota_week(utcnow())
    # Enough left to pass the claim's gate, not enough for one call's worst case.
    await h.store.ledger.set_team_quota("default", week, quota_micro_usd=10, actor="lead")
    order = await h.order()
    order_id = order.id or ""

    bounced = await h.run_next()
    assert bounced is not None and bounced.kind == "requeued"
    row = await h.store.orders.get_row(order_id)
    first_wait = as_utc(row.waiting_since)
    assert row.status == Status.QUEUED.value and first_wait is not None
    available = as_utc(row.available_at)
    assert available is not None and available - utcnow() > timedelta(seconds=2)
    assert await h.run_next() is None  # backing off: not claimed again at once

    # Later, the week is still spent: the claim passes it over without starting a run that
    # could only bounce (its next call does not fit), and it is still waiting since the first
    # time; no new notice is posted to the thread.
    later = utcnow() + timedelta(minutes=5)  # within max_quota_wait_s
    claim = await h.store.queue.claim(
        "w2", lease_ttl_s=5, admission=queue.admission(h.settings), now=later
    )
    assert claim.order is None
    # The claim words the wait itself (the status message is updated in place, not reposted).
    [(waiting, reason)] = claim.waiting
    assert waiting.id == order_id and "waiting for team quota" in reason
    row = await h.store.orders.get_row(order_id)
    assert row.status == Status.QUEUED.value and row.attempts == 1
    assert as_utc(row.waiting_since) == first_wait
    assert [oid for oid, _ in h.reporter.waits] == [order_id]
    assert h.anthropic.requests == []

    # Past max_quota_wait_s the order ends in exception instead of waiting for ever.
    async with h.store.transaction() as s:
        await s.exec(
            update(WorkOrderRow)
            .where(col(WorkOrderRow.id) == int(order_id[3:]))
            .values(waiting_since=utcnow() - timedelta(seconds=700))
        )
    later = utcnow() + timedelta(hours=1)
    claim = await h.store.queue.claim(
        "w3", lease_ttl_s=5, admission=queue.admission(h.settings), now=later
    )
    assert claim.order is None and [o.id for o in claim.expired] == [order_id]
    row = await h.store.orders.get_row(order_id)
    assert (row.status, row.exception_kind) == (Status.EXCEPTION.value, "quota")
    assert row.attempts == 1 and h.anthropic.requests == []


async def test_a_crash_between_verifying_and_review_is_finished_not_sent_back(
    harness: Harness,
) -> None:
    """The run dies (its process killed) just as its order leaves the run for the verifier:
    the order is not left in verifying for nobody, and the model is not told its work was
    sent back; the next attempt finishes the verification."""
    h = harness
    checks = Verification(automatic_checks=True, reviewers=["U7"])
    order = await h.order(verification=checks)
    order_id = order.id or ""
    passed = {"verdicts": [{"index": i, "passed": True, "reason": "ok"} for i in (1, 2)]}
    h.anthropic.script(
        Reply.tool("submit_deliverable", {"content": "the table", "summary": "t"}),
        Reply.tool("record_verdicts", passed),  # the verifier
    )
    real_move = h.store.queue._move
    crashed = False

    async def dies_on_review(s, row, target, **kw):  # type: ignore[no-untyped-def]
        nonlocal crashed
        if target == Status.AWAITING_REVIEW and not crashed:
            crashed = True
            raise _Killed  # the process dies here, mid-transaction
        return await real_move(s, row, target, **kw)

    h.store.queue._move = dies_on_review  # type: ignore[method-assign]
    try:
        await h.run_next()
    except _Killed:
        pass
    finally:
        h.store.queue._move = real_move  # type: ignore[method-assign]
    assert crashed
    row = await h.store.orders.get_row(order_id)
    assert row.status != Status.VERIFYING.value, "left in verifying, with nobody to finish it"
    # Its lease expires; the next attempt finishes the verification.
    await h.store.queue.reap_expired(max_lost=9, now=utcnow() + timedelta(minutes=10))
    requests = len(h.anthropic.requests)
    await h.run_next()
    assert (await h.store.orders.get_order(order_id)).status == Status.AWAITING_REVIEW
    assert len(h.anthropic.requests) == requests  # the model was not asked to revise
