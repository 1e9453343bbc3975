"""The Outbox in front of a reporter: priorities, coalescing, retries under rate limiting."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tests.support.factories import make_order
from tests.support.waiting import eventually
from workers.errors import RetryLater
from workers.progress import ExceptionKind, Outbox, RunResult, Spend
from workers.workorder import WorkOrder

SPEND = Spend(0.1, 2.0, 100, 1000, 1, 10, 1, 10, 5.0, 60)


def order(n: int) -> WorkOrder:
    return make_order(id=f"WO-{n}")


@dataclass
class RateLimited:
    """A reporter whose first `limited` deliveries are refused with Retry-After."""

    limited: int = 0
    after_s: float = 0.05
    delivered: list[str] = field(default_factory=list)
    refused: int = 0

    def _gate(self) -> None:
        if self.refused < self.limited:
            self.refused += 1
            raise RetryLater(self.after_s, "slack says slow down")

    async def status(self, order: WorkOrder, step: str, spend: Spend) -> None:
        self._gate()
        self.delivered.append(f"status {order.id} {step}")

    async def waiting(self, order: WorkOrder, reason: str) -> None:
        self._gate()
        self.delivered.append(f"waiting {order.id}")

    async def question(self, order: WorkOrder, text: str, *, key: str) -> None:
        self._gate()
        self.delivered.append(f"question {key}")

    async def result(self, order: WorkOrder, result: RunResult) -> None:
        self._gate()
        self.delivered.append(f"result {result.key}")

    async def exception(
        self, order: WorkOrder, kind: ExceptionKind, message: str, spend: Spend, *, key: str
    ) -> None:
        self._gate()
        self.delivered.append(f"exception {key}")


async def test_important_messages_go_first_and_in_order_under_rate_limiting() -> None:
    inner = RateLimited(limited=5)
    outbox = Outbox(inner, min_interval_s=0.0)
    for step in range(20):
        await outbox.status(order(1), f"step {step}", SPEND)
    await outbox.waiting(order(3), "quota")
    await outbox.result(order(1), RunResult("content", "summary", "WO-1:result:1"))
    await outbox.question(order(2), "Which one?", key="WO-2:question:t1")
    await outbox.exception(order(3), "budget", "spent", SPEND, key="WO-3:exception:1")
    assert await outbox.drain(30)
    await outbox.close()
    assert inner.delivered[:4] == [
        "result WO-1:result:1",
        "question WO-2:question:t1",
        "exception WO-3:exception:1",
        "waiting WO-3",
    ]
    # Twenty status updates collapsed into the latest one.
    assert inner.delivered[4:] == ["status WO-1 step 19"]
    assert outbox.dropped == []


async def test_status_updates_are_coalesced_per_order_and_interval() -> None:
    now = [100.0]  # the outbox's clock, moved by the test
    inner = RateLimited()
    outbox = Outbox(inner, min_interval_s=0.3, clock=lambda: now[0])
    outbox.start()
    await outbox.status(order(1), "a0", SPEND)
    await outbox.status(order(2), "b0", SPEND)
    assert await outbox.drain(30)  # the first update of each order goes out at once
    for step in range(1, 5):
        await outbox.status(order(1), f"a{step}", SPEND)
        await outbox.status(order(2), f"b{step}", SPEND)
        await asyncio.sleep(0)  # let the outbox run: the interval has not passed
    assert inner.delivered == ["status WO-1 a0", "status WO-2 b0"]
    now[0] += 0.3
    assert await outbox.drain(30)
    await outbox.close()
    assert sorted(inner.delivered[2:]) == ["status WO-1 a4", "status WO-2 b4"]


async def test_a_message_that_keeps_failing_is_dropped_after_its_attempts() -> None:
    inner = RateLimited(limited=100, after_s=0.001)
    outbox = Outbox(inner, min_interval_s=0.0, max_attempts=3)
    await outbox.result(order(1), RunResult("c", "s", "WO-1:result:1"))
    assert await outbox.drain(30)
    await outbox.close()
    assert outbox.dropped == ["WO-1:result:1"] and inner.refused == 3 and inner.delivered == []


async def test_a_broken_reporter_does_not_stop_delivery() -> None:
    class Flaky(RateLimited):
        failed = 0

        async def status(self, order: WorkOrder, step: str, spend: Spend) -> None:
            self.failed += 1
            raise RuntimeError("boom")

    inner = Flaky()
    outbox = Outbox(inner, min_interval_s=0.0, retry_delay_s=0.001)
    await outbox.status(order(1), "x", SPEND)
    await outbox.question(order(1), "q", key="k")
    outbox.start()
    await eventually(lambda: inner.delivered == ["question k"] and inner.failed >= 2)
    await outbox.close(timeout_s=0.2)  # the status update never goes out; close gives up on it
    assert inner.delivered == ["question k"]
