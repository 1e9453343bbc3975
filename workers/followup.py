"""Follow-ups so that no order goes quiet: review reminders and escalations, notes on silent
orders, deadline warnings, and recovery of checks interrupted by a crash.

Notices are outbox rows like every other message to people (the deliverer sends them).

Everything is derived from the database on each sweep, and every notice has an idempotency
key, so a sweep after a restart neither forgets a due reminder nor repeats one. Of several
`delegate run` processes on one PostgreSQL database, one sweeps at a time (workers.store.sweeps).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from workers import queue
from workers.config import Settings
from workers.errors import IllegalTransition
from workers.keys import (
    deadline_key,
    quiet_key,
    review_escalation_key,
    review_reminder_key,
    status_key,
)
from workers.permissions import reviewers_of
from workers.states import IN_FLIGHT, UNDER_WAY
from workers.store import OutboxItem, Store, as_utc, row_to_order
from workers.workorder import Status, WorkOrder

log = logging.getLogger(__name__)

VERIFYING_STUCK_AFTER = timedelta(minutes=10)

# Slack retries an unacknowledged event within minutes, and a signed request is valid for five:
# a delivery's record is needed no longer than that (an hour, to be generous).
SEEN_EVENTS_KEPT = timedelta(hours=1)


def _at(user: str | None) -> str:
    return f"<@{user}>" if user else "nobody"


def quiet_reason(order: WorkOrder, wait_reason: str | None) -> str:
    if order.status is Status.QUEUED:
        return (
            f"it is queued: {wait_reason}"
            if wait_reason
            else "it is queued, waiting for a free worker"
        )
    if order.status is Status.WAITING_FOR_REQUESTER:
        return f"it is waiting for {_at(order.requester)} to answer the question above"
    if order.status is Status.VERIFYING:
        return "its deliverable is being checked"
    return "it is still working (model calls can take a while; the status message shows its spend)"


class FollowUps:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock

    async def _notice(self, order: WorkOrder, text: str, *, key: str, purpose: str) -> None:
        """Owe the thread a notice (sent by the deliverer; its key keeps it to one)."""
        assert order.id
        await self.store.outbox.add_to_outbox(
            order.id, [OutboxItem("notice", key, {"text": text, "purpose": purpose})]
        )

    async def sweep(self) -> bool:
        """One round; False if another process is sweeping right now (this one skips it)."""
        async with self.store.single_runner("follow-ups") as mine:
            if not mine:
                return False
            now = self.clock()
            for step in (
                self._reviews,
                self._quiet,
                self._deadlines,
                self._stuck_checks,
                self._retention,
            ):
                try:
                    await step(now)
                except Exception:  # one failing step must not stop the others
                    log.exception("follow-up sweep step failed: %s", step.__name__)
        return True

    async def _retention(self, now: datetime) -> None:
        """Stored thread text is kept for `slack.thread_retention_days`; the record of a Slack
        delivery only as long as Slack may still redeliver or replay it."""
        days = self.settings.slack.thread_retention_days
        pruned = await self.store.slack.prune_thread_messages(now - timedelta(days=days))
        if pruned:
            log.info("deleted %d stored thread messages older than %g days", pruned, days)
        await self.store.slack.prune_seen_events(now - SEEN_EVENTS_KEPT)

    async def _reviews(self, now: datetime) -> None:
        review = self.settings.review
        for row in await self.store.orders.orders_in([Status.AWAITING_REVIEW]):
            order = row_to_order(row)
            assert order.id
            since = await self.store.orders.last_entered(order.id, Status.AWAITING_REVIEW)
            if since is None:
                continue
            waited = now - since
            round_key = int(since.timestamp())
            reviewers = " ".join(_at(r) for r in reviewers_of(order))
            if waited >= timedelta(seconds=review.escalate_after_s):
                await self._notice(
                    order,
                    f"{_at(order.escalation_contact)} {order.id} has waited {_hours(waited)} for a review "
                    f"decision from {reviewers}. Could you make sure someone decides?",
                    key=review_escalation_key(order.id, round_key),
                    purpose="escalation",
                )
            elif waited >= timedelta(seconds=review.reminder_after_s):
                await self._notice(
                    order,
                    f"{reviewers} a reminder: {order.id} is waiting for your review "
                    f"(ready {_hours(waited)} ago). The buttons are on the review message above.",
                    key=review_reminder_key(order.id, round_key),
                    purpose="reminder",
                )

    async def _quiet(self, now: datetime) -> None:
        limit = timedelta(seconds=self.settings.review.quiet_after_s)
        for row in await self.store.orders.orders_in(IN_FLIGHT):
            order = row_to_order(row)
            assert order.id
            status_message = await self.store.slack.slack_message(status_key(order.id))
            moments = [as_utc(row.updated_at)]
            if status_message is not None:
                moments.append(as_utc(status_message.updated_at))
            last = max(m for m in moments if m is not None)
            if now - last < limit:
                continue
            await self._notice(
                order,
                f"Still here: nothing has changed on {order.id} for {_hours(now - last)} because "
                f"{quiet_reason(order, row.wait_reason)}.",
                key=quiet_key(order.id, int(last.timestamp())),
                purpose="quiet",
            )

    async def _deadlines(self, now: datetime) -> None:
        for row in await self.store.orders.orders_in(UNDER_WAY):
            order = row_to_order(row)
            if order.deadline is None:
                continue
            assert order.id
            people = " ".join(
                _at(p) for p in dict.fromkeys([order.escalation_contact, order.requester]) if p
            )
            if now >= order.deadline:
                await self._notice(
                    order,
                    f"{people} {order.id} has missed its deadline "
                    f"(<!date^{int(order.deadline.timestamp())}^{{date_short_pretty}} at {{time}}|{order.deadline:%Y-%m-%d %H:%M} UTC>) "
                    f"and is {order.status.value.replace('_', ' ')}. Cancel it, or let it finish late.",
                    key=deadline_key(order.id, "missed"),
                    purpose="deadline",
                )
                continue
            created = as_utc(row.created_at) or now
            span = order.deadline - created
            left = order.deadline - now
            if left <= max(timedelta(hours=1), span * 0.2):
                await self._notice(
                    order,
                    f"{people} {order.id} is at risk of missing its deadline: {_hours(left)} left "
                    f"and it is {order.status.value.replace('_', ' ')}.",
                    key=deadline_key(order.id, "risk"),
                    purpose="deadline",
                )

    async def _stuck_checks(self, now: datetime) -> None:
        """A worker that died between the check and the hand-over leaves the order verifying."""
        for row in await self.store.orders.orders_in([Status.VERIFYING]):
            updated = as_utc(row.updated_at)
            if updated is None or now - updated < VERIFYING_STUCK_AFTER:
                continue
            order = row_to_order(row)
            assert order.id
            try:
                await queue.enqueue(
                    self.store,
                    self.settings,
                    order.id,
                    actor="sweeper",
                    reason="check interrupted; resuming",
                )
            except IllegalTransition:
                continue


def _hours(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h" + (f" {rest} min" if rest else "")
    return f"{hours // 24} days"
