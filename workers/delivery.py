"""Saying a durable outbox message (workers.store.outbox) through a `ProgressReporter`.

The message is rendered at send time from the order's current row (its spend, its state), so
what the thread hears is never older than the order. The Slack front door's deliverer
(bot.delivery) calls `replay` through `SlackReporter.deliver`; `drain_outbox` serves reporters
without a Slack client of their own (engine tests, a local console).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from workers.models import OutboxMessage
from workers.progress import (
    ApprovalRequest,
    DomainRequest,
    ExceptionDecision,
    ExceptionKind,
    ProgressReporter,
    ReviewDecision,
    RunResult,
    Spend,
    StatusStep,
)
from workers.store import Store, row_to_order
from workers.workorder import Budget

log = logging.getLogger(__name__)


async def replay(store: Store, reporter: ProgressReporter, message: OutboxMessage) -> None:
    """Say one outbox message: the reporter call the engine used to make itself."""
    if message.order_id is None:
        raise ValueError(f"{message.kind!r} ({message.key}) is a dialogue's, not an order's")
    row = await store.orders.get_row(message.order_id)
    order, spend, payload = row_to_order(row), Spend.of(row), dict(message.payload)
    if message.kind == "status":
        step = str(payload.get("step", ""))
        if payload.get("waiting"):
            await reporter.waiting(order, step)
        else:
            await reporter.status(
                order, StatusStep(step, by=payload.get("by"), person=payload.get("person")), spend
            )
    elif message.kind == "result":
        result = RunResult(
            content=str(payload.get("content", "")),
            summary=str(payload.get("summary", "")),
            key=message.key,
            verdicts=payload.get("verdicts"),
            note=str(payload.get("note", "")),
            spend=spend,
            files=list(payload.get("files") or []),
        )
        await reporter.result(order, result)
    elif message.kind == "question":
        await reporter.question(order, str(payload.get("text", "")), key=message.key)
    elif message.kind == "domain":
        request = DomainRequest(
            approval_id=int(payload.get("approval_id", 0)),
            host=str(payload.get("host", "")),
            url=str(payload.get("url", "")),
            reason=str(payload.get("reason", "")),
            approvers=tuple(str(p) for p in payload.get("approvers") or []),
        )
        await reporter.domain_request(order, request, key=message.key)
    elif message.kind == "approval":
        approval = await store.approvals.get_approval(int(payload.get("approval_id", 0)))
        asked = [str(p) for p in payload.get("approvers") or []]
        await reporter.approval_request(order, ApprovalRequest.of(approval, asked), key=message.key)
    elif message.kind == "approval_decided":
        approval = await store.approvals.get_approval(int(payload.get("approval_id", 0)))
        shown = ApprovalRequest.of(approval)
        await reporter.approval_decided(order, shown, key=str(payload.get("key", "")))
    elif message.kind == "decided":
        decision = ReviewDecision(
            deliverable_id=int(payload["deliverable_id"]),
            decision=str(payload.get("decision", "")),
            actor=str(payload.get("actor", "")),
            at=datetime.fromisoformat(str(payload["at"])),
            feedback=str(payload.get("feedback", "")),
            self_approved=bool(payload.get("self_approved")),
        )
        await reporter.decided(order, decision)
    elif message.kind == "exception_decided":
        budget = payload.get("budget")
        acted = ExceptionDecision(
            key=str(payload["key"]),
            kind=payload.get("kind", "crashed"),
            message=str(payload.get("message", "")),
            spend=Spend(**payload["spend"]),
            action=payload["action"],
            actor=str(payload.get("actor", "")),
            budget=Budget.model_validate(budget) if budget is not None else None,
        )
        await reporter.exception_decided(order, acted)
    elif message.kind == "card":
        await reporter.card_note(order, payload["note"], actor=str(payload.get("actor", "")))
    elif message.kind == "notice":
        purpose = str(payload.get("purpose", "notice"))
        await reporter.notice(order, str(payload.get("text", "")), key=message.key, purpose=purpose)
    elif message.kind == "exception":
        kind: ExceptionKind = payload.get("kind", "crashed")
        await reporter.exception(
            order, kind, str(payload.get("message", "")), spend, key=message.key
        )
    else:
        raise ValueError(f"unknown outbox message kind {message.kind!r} ({message.key})")


async def drain_outbox(store: Store, reporter: ProgressReporter, *, owner: str = "local") -> int:
    """Say everything due through `reporter` and mark it sent; how many were said."""
    said = 0
    while messages := await store.outbox.claim_outbox(owner):
        for message in messages:
            assert message.id is not None
            try:
                await replay(store, reporter, message)
            except Exception as exc:
                log.exception("outbox message not said", extra={"key": message.key})
                await store.outbox.outbox_retry(message.id, after_s=60, error=str(exc))
                continue
            await store.outbox.outbox_sent(message.id, owner)
            said += 1
    return said


class LocalDelivery:
    """Says the outbox through a reporter in this process, for a pool without a Slack front
    door (a log-only worker, tests): as soon as a transaction writes a message, and every
    `poll_s` for what falls due later (a coalesced status) or another process wrote."""

    def __init__(self, store: Store, reporter: ProgressReporter, *, poll_s: float = 0.5) -> None:
        self.store = store
        self.reporter = reporter
        self.poll_s = poll_s
        self.owner = f"local:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._closing = False

    def start(self, stop: asyncio.Event) -> LocalDelivery:
        self._unsubscribe = self.store.on_outbox(self._wake.set)
        self._task = asyncio.create_task(self._run(stop), name="local-delivery")
        return self

    async def _run(self, stop: asyncio.Event) -> None:
        # Stopped between passes, never cancelled in one: on SQLite a cancelled query can keep
        # the write lock in the driver's thread.
        while not (stop.is_set() or self._closing):
            self._wake.clear()
            try:
                await drain_outbox(self.store, self.reporter, owner=self.owner)
            except Exception:
                log.exception("local outbox delivery failed; retrying")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()

    async def close(self) -> None:
        """Stop, after saying what the pool's last steps wrote."""
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await drain_outbox(self.store, self.reporter, owner=self.owner)
        except Exception:
            log.exception("local outbox delivery failed at shutdown")
