"""How the engine tells the outside world what a run is doing.

The engine reports through `ProgressReporter`; the Slack front door implements it (one status
message per order updated in place, questions, results, exceptions in the thread). Every
message that must not be posted twice carries an idempotency `key`: a resumed run reports the
same key again, and the implementation posts once per key.

`Outbox` sits in front of any reporter: it delivers the important messages (results, questions,
exceptions) first and in order, and coalesces status updates to at most one per order per
interval, so that under rate limiting progress updates never delay or displace what matters.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from workers.budget import micro_to_usd
from workers.errors import RetryLater
from workers.models import WorkOrderRow
from workers.states import WaitKind
from workers.workorder import Budget, WorkOrder

log = logging.getLogger(__name__)

ExceptionKind = Literal[
    "budget",  # a ceiling (USD, tokens, wall clock, tool or model calls) stopped the run
    "authority",  # the run kept asking for tools or domains its policy does not grant
    "crashed",  # the run died (lost its lease) more often than engine.max_attempts allows
    "provider",  # the model provider refused (key, billing, input) or every model failed
    "refusal",  # the model declined the work
    "stalled",  # the run stopped making progress (no deliverable within engine.max_steps)
    "quota",  # the order waited for team quota longer than engine.max_quota_wait_s
]


@dataclass(frozen=True)
class Spend:
    """Where an order stands against its budget."""

    spent_usd: float
    max_usd: float
    tokens: int
    max_tokens: int
    tool_calls: int
    max_tool_calls: int
    model_calls: int
    max_model_calls: int
    elapsed_s: float
    max_wall_clock_s: int

    @classmethod
    def of(cls, row: WorkOrderRow, *, elapsed_s: float | None = None) -> Spend:
        budget = Budget.model_validate(row.budget)
        return cls(
            spent_usd=micro_to_usd(row.spent_micro_usd),
            max_usd=budget.max_usd,
            tokens=row.spent_tokens,
            max_tokens=budget.max_tokens,
            tool_calls=row.tool_calls,
            max_tool_calls=budget.max_tool_calls,
            model_calls=row.model_calls,
            max_model_calls=budget.max_model_calls,
            elapsed_s=row.elapsed_ms / 1000 if elapsed_s is None else elapsed_s,
            max_wall_clock_s=budget.max_wall_clock_s,
        )

    def describe(self) -> str:
        """e.g. "$0.12 of $2.00 · 1 min 5 s of 15 min · 4 of 40 tool calls"."""
        return (
            f"${self.spent_usd:.2f} of ${self.max_usd:.2f} · "
            f"{_duration(self.elapsed_s)} of {_duration(self.max_wall_clock_s)} · "
            f"{self.tool_calls} of {self.max_tool_calls} tool calls"
        )


@dataclass(frozen=True)
class HeldBack:
    """Why a queued order may not start yet (the store decides, this says it in words)."""

    reason: Literal["team_quota", "user_runs"]
    team: str = ""
    used_micro_usd: int = 0
    quota_micro_usd: int = 0
    requester: str = ""
    running: int = 0
    limit: int = 0

    @classmethod
    def team_quota(cls, team: str, *, used_micro_usd: int, quota_micro_usd: int) -> HeldBack:
        return cls(
            "team_quota", team=team, used_micro_usd=used_micro_usd, quota_micro_usd=quota_micro_usd
        )

    @classmethod
    def user_runs(cls, requester: str, *, running: int, limit: int) -> HeldBack:
        return cls("user_runs", requester=requester, running=running, limit=limit)

    @property
    def kind(self) -> WaitKind:
        return WaitKind.QUOTA if self.reason == "team_quota" else WaitKind.SLOT

    def describe(self) -> str:
        if self.reason == "team_quota":
            return (
                f"waiting for team quota: team {self.team} has used "
                f"${micro_to_usd(self.used_micro_usd):.2f} of its "
                f"${micro_to_usd(self.quota_micro_usd):.2f} weekly quota"
            )
        return (
            f"waiting for a free slot: the requester already has {self.running} "
            f"run{'s' if self.running != 1 else ''} going (limit {self.limit})"
        )


def crashed_message(lost: int, owner: str | None) -> str:
    """Why an order whose worker kept dying is in exception."""
    return (
        f"the run stopped responding {lost} time{'s' if lost != 1 else ''} (last worker: {owner})"
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


@dataclass(frozen=True)
class RunResult:
    """A submitted deliverable, as the run handed it in."""

    content: str
    summary: str
    key: str
    """Idempotency key, e.g. 'WO-42:result:7' (7 is the stored deliverable's id)."""
    verdicts: list[dict[str, Any]] | None = None
    """Automatic check per criterion ({"criterion", "passed", "reason"}); None if not checked."""
    note: str = ""
    """Anything the reviewer should know about the checks (e.g. why they did not run)."""
    spend: Spend | None = None


@dataclass(frozen=True)
class DomainRequest:
    """A run wants to read a page outside its allowed domains (`reason` is the model's words)."""

    approval_id: int
    host: str
    url: str
    reason: str


class ProgressReporter(Protocol):
    """What the engine says about an order. Implementations must be idempotent per `key`."""

    async def status(self, order: WorkOrder, step: str, spend: Spend) -> None:
        """Update the order's single status message in place (state is `order.status`)."""
        ...

    async def waiting(self, order: WorkOrder, reason: str) -> None:
        """A queued order is being held back (quota, per-user limit, provider back-off)."""
        ...

    async def question(self, order: WorkOrder, text: str, *, key: str) -> None:
        """Ask the requester in the thread; their reply resumes the run."""
        ...

    async def domain_request(self, order: WorkOrder, request: DomainRequest, *, key: str) -> None:
        """Ask the requester (and escalation contact) whether the run may read a domain outside
        its allowlist: allow once, allow for the order, or deny. The answer resumes the run."""
        ...

    async def result(self, order: WorkOrder, result: RunResult) -> None:
        """The run submitted its deliverable."""
        ...

    async def exception(
        self, order: WorkOrder, kind: ExceptionKind, message: str, spend: Spend, *, key: str
    ) -> None:
        """The run stopped and needs a person: what happened, in plain words."""
        ...


class LoggingReporter:
    """A reporter for workers without a Slack front door: it writes to the log."""

    async def status(self, order: WorkOrder, step: str, spend: Spend) -> None:
        log.info(
            "%s %s: %s (%s)",
            order.id,
            order.status.value,
            step,
            spend.describe(),
            extra={"order": order.id},
        )

    async def waiting(self, order: WorkOrder, reason: str) -> None:
        log.info("%s waiting: %s", order.id, reason, extra={"order": order.id})

    async def question(self, order: WorkOrder, text: str, *, key: str) -> None:
        log.info("%s asks the requester: %s", order.id, text, extra={"order": order.id})

    async def domain_request(self, order: WorkOrder, request: DomainRequest, *, key: str) -> None:
        log.info(
            "%s asks to read %s (%s)",
            order.id,
            request.url,
            request.reason,
            extra={"order": order.id},
        )

    async def result(self, order: WorkOrder, result: RunResult) -> None:
        log.info("%s submitted: %s", order.id, result.summary, extra={"order": order.id})

    async def exception(
        self, order: WorkOrder, kind: ExceptionKind, message: str, spend: Spend, *, key: str
    ) -> None:
        log.warning(
            "%s exception (%s): %s", order.id, kind, message, extra={"order": order.id}
        )


# Delivery order: lower first. Status updates go last and are coalesced.
_URGENT, _NORMAL, _STATUS = 0, 1, 2


@dataclass
class _Item:
    priority: int
    order_id: str
    send: Callable[[], Awaitable[None]]
    what: str
    attempts: int = 0

    def __lt__(self, other: _Item) -> bool:  # heap entries tie-break on a unique seq first
        return False


class Outbox:
    """A `ProgressReporter` that queues in front of another one and delivers in priority order.

    Results, questions and exceptions are delivered first, in the order they were reported, and
    retried (honouring `RetryLater` from the inner reporter) until delivered or
    `max_attempts` is reached. Waiting notices come next. Status updates come last: only the
    latest per order is kept, and one order gets at most one every `min_interval_s`.
    """

    def __init__(
        self,
        inner: ProgressReporter,
        *,
        min_interval_s: float = 5.0,
        max_attempts: int = 8,
        retry_delay_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.min_interval_s = min_interval_s
        self.max_attempts = max_attempts
        self.retry_delay_s = retry_delay_s
        self.clock = clock
        self._queue: list[tuple[int, int, _Item]] = []
        self._seq = itertools.count()
        self._status: dict[str, _Item] = {}
        self._status_sent_at: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.dropped: list[str] = []

    # ProgressReporter

    async def status(self, order: WorkOrder, step: str, spend: Spend) -> None:
        key = order.id or ""
        self._status[key] = _Item(
            _STATUS, key, lambda: self.inner.status(order, step, spend), f"status {step}"
        )
        self._kick()

    async def waiting(self, order: WorkOrder, reason: str) -> None:
        self._push(_NORMAL, order, lambda: self.inner.waiting(order, reason), "waiting")

    async def question(self, order: WorkOrder, text: str, *, key: str) -> None:
        self._push(_URGENT, order, lambda: self.inner.question(order, text, key=key), key)

    async def domain_request(self, order: WorkOrder, request: DomainRequest, *, key: str) -> None:
        self._push(_URGENT, order, lambda: self.inner.domain_request(order, request, key=key), key)

    async def result(self, order: WorkOrder, result: RunResult) -> None:
        self._push(_URGENT, order, lambda: self.inner.result(order, result), result.key)

    async def exception(
        self, order: WorkOrder, kind: ExceptionKind, message: str, spend: Spend, *, key: str
    ) -> None:
        self._push(
            _URGENT,
            order,
            lambda: self.inner.exception(order, kind, message, spend, key=key),
            key,
        )

    # Delivery

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._deliver_forever(), name="outbox")

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until everything queued is delivered (status updates included)."""
        self.start()
        try:
            async with asyncio.timeout(timeout_s):
                while self._queue or self._status:
                    self._idle.clear()
                    self._kick()
                    await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout_s: float = 5.0) -> None:
        await self.drain(timeout_s)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _push(
        self, priority: int, order: WorkOrder, send: Callable[[], Awaitable[None]], what: str
    ) -> None:
        item = _Item(priority, order.id or "", send, what)
        heapq.heappush(self._queue, (priority, next(self._seq), item))
        self._kick()

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()

    def _next(self) -> tuple[_Item | None, float | None]:
        """The item to send now, or how long until a status update falls due."""
        if self._queue:
            return self._queue[0][2], None
        now = self.clock()
        soonest: float | None = None
        for key, item in self._status.items():
            due = self._status_sent_at.get(key, -float("inf")) + self.min_interval_s
            if due <= now:
                return item, None
            soonest = due - now if soonest is None else min(soonest, due - now)
        return None, soonest

    async def _deliver_forever(self) -> None:
        while True:
            item, wait_s = self._next()
            if item is None:
                if wait_s is None:
                    self._idle.set()
                self._wake.clear()
                try:
                    async with asyncio.timeout(wait_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            await self._deliver(item)

    async def _deliver(self, item: _Item) -> None:
        is_status = item.priority == _STATUS
        entry: tuple[int, int, _Item] | None = None
        if is_status:
            # Take it out now: a newer update reported while this one is in flight replaces it.
            self._status.pop(item.order_id, None)
            self._status_sent_at[item.order_id] = self.clock()
        else:
            entry = heapq.heappop(self._queue)
        try:
            await item.send()
        except RetryLater as exc:
            log.info(
                "%s held up (%s); retrying in %g s",
                item.what,
                exc,
                exc.after_s,
                extra={"order": item.order_id},
            )
            await self._retry(item, entry, exc.after_s)
        except Exception:
            log.exception("progress delivery failed", extra={"order": item.order_id})
            await self._retry(item, entry, self.retry_delay_s * 2**item.attempts)

    async def _retry(
        self, item: _Item, entry: tuple[int, int, _Item] | None, delay_s: float
    ) -> None:
        item.attempts += 1
        if entry is None:
            # A status update: a later one supersedes it; if none comes, retry after the delay.
            self._status.setdefault(item.order_id, item)
            self._status_sent_at[item.order_id] = self.clock() + delay_s - self.min_interval_s
            return
        if item.attempts >= self.max_attempts:
            self.dropped.append(item.what)
            log.error("progress message dropped after retries", extra={"order": item.order_id})
            return
        # Back in at its original place, ahead of anything reported since.
        heapq.heappush(self._queue, entry)
        await asyncio.sleep(delay_s)
