"""Saying a durable outbox message (workers.store.outbox) through a `ProgressReporter`.

The message is rendered at send time from the order's current row (its spend, its state), so
what the thread hears is never older than the order. The Slack front door's deliverer
(bot.delivery) calls `replay` through `SlackReporter.deliver`; `drain_outbox` serves reporters
without a Slack client of their own (engine tests, a local console).
"""

from __future__ import annotations

import logging

from workers.models import OutboxMessage
from workers.progress import ExceptionKind, ProgressReporter, RunResult, Spend
from workers.store import Store, row_to_order

log = logging.getLogger(__name__)


async def replay(store: Store, reporter: ProgressReporter, message: OutboxMessage) -> None:
    """Say one outbox message: the reporter call the engine used to make itself."""
    row = await store.get_row(message.order_id)
    order, spend, payload = row_to_order(row), Spend.of(row), dict(message.payload)
    if message.kind == "result":
        result = RunResult(
            content=str(payload.get("content", "")),
            summary=str(payload.get("summary", "")),
            key=message.key,
            verdicts=payload.get("verdicts"),
            note=str(payload.get("note", "")),
            spend=spend,
        )
        await reporter.result(order, result)
    elif message.kind == "question":
        await reporter.question(order, str(payload.get("text", "")), key=message.key)
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
    while messages := await store.claim_outbox(owner):
        for message in messages:
            assert message.id is not None
            try:
                await replay(store, reporter, message)
            except Exception as exc:
                log.exception("outbox message not said", extra={"key": message.key})
                await store.outbox_retry(message.id, after_s=60, error=str(exc))
                continue
            await store.outbox_sent(message.id)
            said += 1
    return said
