"""The durable outbox: messages an order owes its thread, and the health every process shares.

The engine writes a message (`OutboxItem`: a kind, its idempotency key and a domain payload,
never Slack blocks) in the same transaction as the state change that causes it (`write_outbox`,
called by `finish_run`). A deliverer in any process with a Slack client claims due rows
(`claim_outbox`: FOR UPDATE SKIP LOCKED on PostgreSQL, BEGIN IMMEDIATE on SQLite), sends them
and marks them sent; a failed send backs off on its own row, so one order's trouble never holds
up another's. A row whose claimer died is claimed again once `claimed_until` passes: the
message's key makes the second send find the first instead of posting twice.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, case, delete, exists, func, insert, or_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from workers.audit import SYSTEM_CHAIN
from workers.keys import (
    card_note_key,
    decided_key,
    exception_key,
    result_key,
    review_key,
    status_key,
)
from workers.models import OutboxMessage, ServiceHealth, SlackMessage, WorkOrderRow
from workers.progress import CardNote, Spend
from workers.states import IN_FLIGHT
from workers.store.base import OUTBOX_WRITTEN, OrderRef, StoreBase, as_utc, order_number
from workers.store.leases import database_now, transaction_now
from workers.workorder import Budget, Status, format_order_id

URGENT, NORMAL, STATUS = 0, 1, 2

RUN, REST = "run", "rest"
"""A status written while a run works (streamed), or while the order rests between runs."""

SLACK = "slack"
"""The `service_health` entry set while Slack refuses the bot token."""


@dataclass(frozen=True)
class OutboxItem:
    """A message to send once the transaction that writes it commits."""

    # result, question, exception, domain, approval, decided, approval_decided,
    # exception_decided, card, notice, status
    kind: str
    key: str
    payload: dict[str, Any] = field(default_factory=dict)
    priority: int = URGENT
    coalesce_s: float = 0.0
    """Status only: at most one send per this many seconds (a newer status replaces the row)."""


@dataclass(frozen=True)
class Undelivered:
    """A message not (yet) delivered, for the doctor, the health check and the metrics."""

    order_id: str
    """WO-n, or for an intake reply sent before any order exists, its dialogue's channel."""
    key: str
    kind: str
    attempts: int
    error: str | None
    permanent: bool
    created_at: datetime


def exception_notice(key: str, kind: str, message: str) -> OutboxItem:
    """The exception notice an order owes its thread (rendered with the spend at send time)."""
    return OutboxItem("exception", key, {"kind": kind, "message": message})


def status_item(
    order_id: str,
    step: str,
    *,
    by: str | None = None,
    person: str | None = None,
    waiting: bool = False,
    coalesce_s: float = 0.0,
    phase: str = REST,
    task: str | None = None,
    task_status: str = "in_progress",
    state_task: bool = False,
) -> OutboxItem:
    """The order's status message as it should read now: one row per order, rewritten in place.

    `step` is shown as untrusted text (it may carry a model's or a page's words); `by` is the
    person whose action it reports and `person` the one "{person}" in `step` names (each shown
    as a mention of that user id). Writers hold the order's row lock and
    check its state (`OrdersStore.report_status`, `StoreBase._move`), so a step reported for a
    state the order has left never replaces what it rests in."""
    payload: dict[str, Any] = {"step": step}
    if by:
        payload["by"] = by
    if person:
        payload["person"] = person
    if waiting:
        payload["waiting"] = True
    payload["phase"] = phase
    if task:
        payload["task"] = {"title": task[:TASK_TITLE_MAX], "status": task_status}
        if state_task:
            payload["task"]["state"] = True
    return OutboxItem("status", status_key(order_id), payload, STATUS, coalesce_s)


# The live plan (bot/live_plan.py streams it while a run works). It rides on the status row:
# each write merges its step into the plan the row already holds, so a coalesced (replaced,
# never sent) status loses no step, and the last state of the plan is as durable as the row.
PLAN_MAX = 40
"""Tasks a plan keeps (the oldest go first); Slack shows a plan, not a log."""
TASK_TITLE_MAX = 150
# Steps that say a run has (re)started: the plan's first task ("Reading the thread") says it.
_SILENT_STEPS = frozenset({"Starting", "Resuming"})


def merge_plan(old: Mapping[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """`new` status payload with the plan carried over from `old` and its own task added.

    `stream` counts the runs that streamed a plan: a run after a rest starts a new one. Tasks
    under way are complete once the next starts; at a rest they end with the rest's own task
    (its status says how: `pending` for a wait, `error` for an exception)."""
    old = old or {}
    stream = int(old.get("stream", 0))
    plan: list[dict[str, Any]] = [dict(t) for t in old.get("plan") or []]
    seen = int(old.get("tasks", 0))
    if new.get("phase") == RUN and old.get("phase") != RUN:
        stream, plan = stream + 1, []
    task = new.pop("task", None)
    if task is not None and plan and plan[-1]["title"] == task["title"] and (
        task.get("state") or plan[-1].get("state")
    ):
        # A state change and the run's own step that say the same (verifying): one task.
        # Two tool calls alike stay two tasks.
        plan[-1]["status"] = task["status"]
    elif task is not None:
        ending = "error" if task["status"] == "error" else "complete"
        for earlier in plan:
            if earlier["status"] == "in_progress":
                earlier["status"] = ending
        seen += 1
        plan.append({"id": f"t{seen}", **task})
    return {**new, "stream": stream, "plan": plan[-PLAN_MAX:], "tasks": seen}


STATE_STEPS: dict[Status, str] = {
    Status.QUEUED: "In the queue",
    Status.RUNNING: "Starting",
    Status.WAITING_FOR_REQUESTER: "Waiting for the requester to answer",
    Status.VERIFYING: "Checking the deliverable against its acceptance criteria",
    Status.AWAITING_REVIEW: "Deliverable submitted; waiting for review",
    Status.APPROVED: "Approved",
    Status.REJECTED: "Rejected",
    Status.CHANGES_REQUESTED: "Reworking with the reviewer's feedback",
    Status.CANCELLED: "Cancelled",
}


async def state_status(
    s: AsyncSession,
    row: WorkOrderRow,
    *,
    actor: str,
    reason: str,
    step: str | None = None,
    by: str | None = None,
) -> None:
    """The status a state change owes the thread, written in the change's transaction."""
    assert row.id is not None
    state = Status(row.status)
    order_id = format_order_id(row.id)
    task, task_status = _state_task(state, reason)
    phase = RUN if state in STREAMED else REST
    if step is None and state is Status.QUEUED and row.wait_reason:
        text, person, by, waiting = row.wait_reason, None, None, True
    elif step is None and state is Status.WAITING_FOR_REQUESTER:
        text, person, by, waiting = "Waiting for {person} to answer", row.requester, None, False
    else:
        text, person, waiting = step or _state_step(row, state, reason), None, False
        by = by or (actor if _PERSON.fullmatch(actor) else None)
    item = status_item(
        order_id,
        text,
        by=by,
        person=person,
        waiting=waiting,
        phase=phase,
        task=task,
        task_status=task_status,
        state_task=True,
    )
    await write_outbox(s, row.id, [item])


STREAMED = frozenset({Status.RUNNING, Status.VERIFYING})
"""The states in which a run works: its plan streams (any other state ends the stream)."""


def _state_task(state: Status, reason: str) -> tuple[str | None, str]:
    """The plan task a state change adds, and its status."""
    if state is Status.RUNNING:
        return "Reading the request and its thread", "in_progress"
    if state is Status.VERIFYING:
        return STATE_STEPS[Status.VERIFYING], "in_progress"
    if state is Status.WAITING_FOR_REQUESTER:
        waits = "Waiting for approval" if "tool call" in reason else "Waiting for an answer"
        return waits, "pending"
    if state is Status.AWAITING_REVIEW:
        return "Handing in for review", "complete"
    if state is Status.EXCEPTION:
        return "Stopped: needs a person", "error"
    if state is Status.CANCELLED:
        return "Cancelled", "error"
    if state is Status.QUEUED:
        return "In the queue", "pending"
    return None, "complete"


# A Slack user id: changes people make are shown with who made them (engine actors are
# worker ids, "verifier", "agent", ...).
_PERSON = re.compile(r"[UW][A-Z0-9]+")

# Requeues that people cause, by the reason the engine records for them.
_REQUEUE_STEPS = {
    "rework requested": "Reworking with the reviewer's feedback",
    "retrying from the last checkpoint": "Retried by {by}; resuming from the last checkpoint",
}


def _state_step(row: WorkOrderRow, state: Status, reason: str) -> str:
    if state is Status.EXCEPTION:
        return f"Stopped: {row.exception_message or 'the run needs a person'}"
    if state is Status.APPROVED and row.self_approved:
        return "Self-approved"
    if state is Status.QUEUED:
        if reason == "budget extended; resuming":
            budget = Budget.model_validate(row.budget).describe()
            return f"Budget extended to {budget} by {{by}}; resuming from the last checkpoint"
        if reason in _REQUEUE_STEPS:
            return _REQUEUE_STEPS[reason]
    return STATE_STEPS.get(state, state.value)


def decided_item(
    row: WorkOrderRow, audit: dict[str, Any], *, decision: str, actor: str, at: datetime
) -> list[OutboxItem]:
    """The edit of the review prompt that shows a reviewer's decision (its buttons go), owed
    from the decision's own transaction; none when nothing was there to decide on."""
    deliverable = audit.get("deliverable")
    if deliverable is None or row.id is None:
        return []
    review = review_key(result_key(format_order_id(row.id), int(deliverable)))
    payload = {
        "deliverable_id": int(deliverable),
        "decision": decision,
        "actor": actor,
        "feedback": str(audit.get("feedback", "")),
        "at": at.isoformat(),
        "self_approved": bool(audit.get("self_approved")),
    }
    # The card shows where the order stands now (approved, rejected, reworking).
    redraw = OutboxItem(
        "card",
        card_note_key(format_order_id(row.id), f"decided:{int(deliverable)}:{decision}"),
        {"note": "decided", "actor": actor},
    )
    return [OutboxItem("decided", decided_key(review), payload), redraw]


async def exception_decided_item(
    s: AsyncSession,
    row: WorkOrderRow,
    *,
    action: str,
    actor: str,
    budget: Mapping[str, Any] | None = None,
) -> list[OutboxItem]:
    """The edit of the exception notice that shows who pressed Extend, Retry or Cancel (its
    buttons go), owed from the action's own transaction; none if no notice was written.

    Read before the action changes the row: the notice is the order's latest (every move to
    exception writes one with it), shown again as it was posted, with the spend it showed."""
    query = (
        select(OutboxMessage)
        .where(col(OutboxMessage.order_id) == row.id, col(OutboxMessage.kind) == "exception")
        .order_by(col(OutboxMessage.id).desc())
        .limit(1)
    )
    notice = (await s.exec(query)).first()
    if notice is None:
        return []
    payload: dict[str, Any] = {
        "key": notice.key,
        "kind": notice.payload.get("kind", "crashed"),
        "message": notice.payload.get("message", ""),
        "spend": asdict(Spend.of(row)),
        "action": action,
        "actor": actor,
    }
    if budget is not None:
        payload["budget"] = dict(budget)
    return [OutboxItem("exception_decided", decided_key(notice.key), payload)]


def card_note_item(order_id: str, note: CardNote, *, actor: str) -> OutboxItem:
    """The edit of the order's card that says who started or cancelled it, owed from the
    Start's or the Cancel's own transaction (rendered from the order as it is at send time)."""
    return OutboxItem("card", card_note_key(order_id, note), {"note": note, "actor": actor})


def crashed_notice(row: WorkOrderRow, message: str) -> OutboxItem:
    """The notice for an order whose worker kept dying (same key as the reaper's report)."""
    assert row.id is not None
    return exception_notice(
        exception_key(format_order_id(row.id), "crashed", row.attempts), "crashed", message
    )


def insert_ignoring(s: AsyncSession, table: Table, values: Mapping[str, Any]) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING on either backend (rowcount 0 if it was there)."""
    assert s.bind is not None
    dialect = s.bind.dialect.name
    if dialect == "postgresql":
        return pg_insert(table).values(**values).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite_insert(table).values(**values).on_conflict_do_nothing()
    return insert(table).values(**values)  # pragma: no cover - Delegate runs on the two above


_outbox: Table = OutboxMessage.__table__  # type: ignore[attr-defined]


async def write_outbox(
    s: AsyncSession,
    ref: OrderRef | None,
    items: Iterable[OutboxItem],
    *,
    now: datetime | None = None,
    intake: int | None = None,
) -> None:
    """Add messages inside an open transaction; a key written before is left as it was, but for
    the status row, which the newest status rewrites (`write_status`). Rows are due at the
    database's time (`now`, or the time the transaction read: `transaction_now`), so every
    process agrees on when a row is due: one whose clock ran ahead would otherwise hold back
    everything it writes by as much.

    `intake` is the dialogue the messages belong to: its replies have no order (`ref` None)
    until a draft is proposed, and they go out in the order written, as an order's do."""
    assert ref is not None or intake is not None, "a message belongs to an order or a dialogue"
    now = now if now is not None else await transaction_now(s)
    for item in items:
        s.info[OUTBOX_WRITTEN] = True
        if item.kind == "status":
            assert ref is not None
            await write_status(s, ref, item, now=now)
            continue
        values = {
            "order_id": order_number(ref) if ref is not None else None,
            "intake_id": intake,
            "key": item.key,
            "kind": item.kind,
            "payload": item.payload,
            "priority": item.priority,
            "created_at": now,
            "attempts": 0,
            "next_attempt_at": now,
            "permanent": False,
        }
        await s.exec(insert_ignoring(s, _outbox, values))


async def write_status(s: AsyncSession, ref: OrderRef, item: OutboxItem, *, now: datetime) -> None:
    """Insert the order's status row or rewrite it with `item`: unsent again, due after the
    coalescing interval since its last send. A claim in flight keeps its `claimed_until`, so
    nobody sends the new text before the old send has finished (`outbox_sent` then frees it)."""
    number = order_number(ref)
    query = select(OutboxMessage).where(col(OutboxMessage.key) == item.key).with_for_update()
    row = (await s.exec(query)).first()
    payload = merge_plan(row.payload if row is not None else None, dict(item.payload))
    if row is None:
        await s.exec(
            insert_ignoring(
                s,
                _outbox,
                {
                    "order_id": number,
                    "key": item.key,
                    "kind": "status",
                    "payload": payload,
                    "priority": STATUS,
                    "created_at": now,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "permanent": False,
                },
            )
        )
        return
    last_sent = as_utc(row.sent_at)
    due = now
    if last_sent is not None and item.coalesce_s > 0:
        due = max(now, last_sent + timedelta(seconds=item.coalesce_s))
    elif row.sent_at is None and item.coalesce_s > 0:
        due = max(now, as_utc(row.next_attempt_at) or now)
    await s.exec(
        update(OutboxMessage)
        .where(col(OutboxMessage.id) == row.id)
        .values(
            payload=payload,
            sent_at=None,
            claimed_by=None,
            attempts=0,
            error=None,
            permanent=False,
            next_attempt_at=due,
        )
    )


def run_step_item(
    row: WorkOrderRow, step: str, coalesce_s: float, *, waiting: bool = False
) -> OutboxItem:
    """The status a step of the order's run (or a wait) shows, for a writer holding its row
    lock and knowing it in flight (`OutboxStore.report_status`, a counted tool call)."""
    assert row.id is not None
    return status_item(
        format_order_id(row.id),
        step,
        waiting=waiting,
        coalesce_s=coalesce_s,
        phase=RUN if Status(row.status) in STREAMED else REST,
        task=None if step in _SILENT_STEPS else step,
    )


class OutboxStore(StoreBase):
    async def add_to_outbox(self, ref: OrderRef, items: Iterable[OutboxItem]) -> None:
        async with self.transaction() as s:
            await write_outbox(s, ref, items)

    async def add_intake_replies(self, session_id: int, items: Iterable[OutboxItem]) -> None:
        """What a dialogue says back without changing itself (a limit reached, a draft that
        can no longer change)."""
        async with self.transaction() as s:
            await write_outbox(s, None, items, intake=session_id)

    async def report_status(
        self,
        ref: OrderRef,
        step: str,
        *,
        states: Collection[Status] = IN_FLIGHT,
        waiting: bool = False,
        coalesce_s: float = 0.0,
    ) -> bool:
        """Show `step` on the order's status message if the order is still in one of `states`
        (checked under its row lock, so a step of a run that has since ended never replaces
        what the order rests in); False if it was not."""
        async with self.transaction() as s:
            row = await self._row(s, ref, for_update=True)
            if Status(row.status) not in states:
                return False
            assert row.id is not None
            await write_outbox(s, row.id, [run_step_item(row, step, coalesce_s, waiting=waiting)])
        return True

    async def claim_outbox(
        self, owner: str, *, limit: int = 20, claim_s: float = 60.0, now: datetime | None = None
    ) -> list[OutboxMessage]:
        """Due messages for `owner` to send: the oldest undelivered one of each order at most,
        so an order's messages go out in the order they were written. The status row stands
        apart: it is edited in place, so it neither waits for nor holds up the others.

        Claim times are the database's (`now` only for tests): a host whose clock runs ahead
        must not see a live claim of another process as expired, and send it a second time."""
        claimed, _ = await self.claim_due(owner, limit=limit, claim_s=claim_s, now=now)
        return claimed

    async def claim_due(
        self, owner: str, *, limit: int = 20, claim_s: float = 60.0, now: datetime | None = None
    ) -> tuple[list[OutboxMessage], float | None]:
        """`claim_outbox`, and when it claimed fewer than `limit`, how many seconds until the
        next message still to be tried falls due (its back-off or a dead claimer's claim ends;
        None: none waits), so a deliverer sleeps until then instead of polling."""
        async with self.transaction() as s:
            now = now or await database_now(self, s)
            claimed = await self._claim_outbox(s, owner, limit=limit, claim_s=claim_s, now=now)
            if len(claimed) >= limit:
                return claimed, 0.0
            due = case(
                (
                    col(OutboxMessage.claimed_until) > col(OutboxMessage.next_attempt_at),
                    col(OutboxMessage.claimed_until),
                ),
                else_=col(OutboxMessage.next_attempt_at),
            )
            query = select(func.min(due)).where(
                col(OutboxMessage.sent_at).is_(None),
                col(OutboxMessage.permanent).is_(False),
                due > now,
            )
            next_due = as_utc((await s.exec(query)).one())
        if next_due is None:
            return claimed, None
        return claimed, max(0.0, (next_due - now).total_seconds())

    async def _claim_outbox(
        self, s: AsyncSession, owner: str, *, limit: int, claim_s: float, now: datetime
    ) -> list[OutboxMessage]:
        earlier = aliased(OutboxMessage)
        waiting_behind = exists().where(
            or_(
                col(earlier.order_id) == col(OutboxMessage.order_id),
                col(earlier.intake_id) == col(OutboxMessage.intake_id),
            ),
            col(earlier.id) < col(OutboxMessage.id),
            col(earlier.sent_at).is_(None),
            col(earlier.permanent).is_(False),
            col(earlier.kind) != "status",
        )
        query = (
            select(OutboxMessage)
            .where(
                col(OutboxMessage.sent_at).is_(None),
                col(OutboxMessage.permanent).is_(False),
                col(OutboxMessage.next_attempt_at) <= now,
                or_(
                    col(OutboxMessage.claimed_until).is_(None),
                    col(OutboxMessage.claimed_until) < now,
                ),
                or_(col(OutboxMessage.kind) == "status", ~waiting_behind),
            )
            .order_by(col(OutboxMessage.priority), col(OutboxMessage.id))
            .limit(limit)
        )
        query = self._for_update(query, skip_locked=True)
        rows = list((await s.exec(query)).all())
        until = now + timedelta(seconds=claim_s)
        for row in rows:
            row.claimed_by, row.claimed_until = owner, until
            row.attempts += 1
            s.add(row)
        return rows

    async def outbox_sent(self, message_id: int, owner: str | None = None) -> None:
        """Mark a message `owner` claimed as sent. A status row rewritten while it was being
        sent (its claim cleared by `write_status`) stays unsent and is freed for the next send."""
        async with self.transaction() as s:
            mine = [col(OutboxMessage.claimed_by) == owner] if owner is not None else []
            result = await s.exec(
                update(OutboxMessage)
                .where(col(OutboxMessage.id) == message_id, *mine)
                .values(
                    sent_at=await database_now(self, s),
                    claimed_by=None,
                    claimed_until=None,
                    error=None,
                )
            )
            if result.rowcount == 0:
                await s.exec(
                    update(OutboxMessage)
                    .where(
                        col(OutboxMessage.id) == message_id,
                        col(OutboxMessage.claimed_by).is_(None),
                        col(OutboxMessage.sent_at).is_(None),
                    )
                    .values(claimed_until=None)
                )

    async def renew_send_claims(
        self, owner: str, message_ids: Collection[int], keys: Collection[str], *, claim_s: float
    ) -> None:
        """Extend the claims of the sends `owner` still has going: on the outbox messages, and on
        the keys those sends are posting. A claim lasts a short while and is renewed while its
        send goes on, so what a process that died had claimed is taken over soon, while a slow
        send (a rate-limit wait, Slack's timeout, the client's retries) keeps its own.

        A status row rewritten mid-send has no owner but keeps its claim: it is renewed too,
        unless another process has taken it over since."""
        if not message_ids and not keys:
            return
        async with self.transaction() as s:
            until = await database_now(self, s) + timedelta(seconds=claim_s)
            if message_ids:
                await s.exec(
                    update(OutboxMessage)
                    .where(
                        col(OutboxMessage.id).in_(list(message_ids)),
                        col(OutboxMessage.sent_at).is_(None),
                        col(OutboxMessage.claimed_until).is_not(None),
                        or_(
                            col(OutboxMessage.claimed_by) == owner,
                            col(OutboxMessage.claimed_by).is_(None),
                        ),
                    )
                    .values(claimed_until=until)
                )
            if keys:
                await s.exec(
                    update(SlackMessage)
                    .where(
                        col(SlackMessage.key).in_(list(keys)),
                        col(SlackMessage.claimed_by) == owner,
                        or_(col(SlackMessage.ts).is_(None), col(SlackMessage.ts) == ""),
                    )
                    .values(claimed_until=until)
                    .execution_options(synchronize_session=False)
                )

    async def outbox_retry(self, message_id: int, *, after_s: float, error: str) -> None:
        """Try again after `after_s` (the row's own back-off; other orders are not held up)."""
        async with self.transaction() as s:
            await s.exec(
                update(OutboxMessage)
                .where(col(OutboxMessage.id) == message_id)
                .values(
                    next_attempt_at=await database_now(self, s) + timedelta(seconds=after_s),
                    claimed_by=None,
                    claimed_until=None,
                    error=error[:500],
                )
            )

    async def outbox_failed(self, message_id: int, *, error: str, actor: str) -> None:
        """The message can never be delivered as it is: keep it, flag it, audit it."""
        async with self.transaction() as s:
            row = await s.get(OutboxMessage, message_id)
            if row is None or row.sent_at is not None:
                return
            row.permanent, row.error = True, error[:500]
            row.claimed_by = row.claimed_until = None
            s.add(row)
            # A dialogue's reply before any order exists is recorded on the system chain.
            await self._append_audit(
                s,
                format_order_id(row.order_id) if row.order_id is not None else SYSTEM_CHAIN,
                actor=actor,
                kind="delivery_failed",
                data={"key": row.key, "kind": row.kind, "error": error}
                | ({"intake": row.intake_id} if row.intake_id is not None else {}),
            )

    async def outbox(self, ref: OrderRef) -> list[OutboxMessage]:
        query = (
            select(OutboxMessage)
            .where(OutboxMessage.order_id == order_number(ref))
            .order_by(col(OutboxMessage.id))
        )
        async with self._sessions() as s:
            return list((await s.exec(query)).all())

    async def undelivered(self) -> list[Undelivered]:
        """Every message not sent yet, oldest first (the permanent failures among them)."""
        query = (
            select(OutboxMessage)
            .where(col(OutboxMessage.sent_at).is_(None))
            .order_by(col(OutboxMessage.id))
        )
        async with self._sessions() as s:
            rows = (await s.exec(query)).all()
        return [
            Undelivered(
                order_id=(
                    format_order_id(r.order_id)
                    if r.order_id is not None
                    else f"the dialogue in {r.payload.get('channel', '?')}"
                ),
                key=r.key,
                kind=r.kind,
                attempts=r.attempts,
                error=r.error,
                permanent=r.permanent,
                created_at=as_utc(r.created_at) or r.created_at,
            )
            for r in rows
        ]

    # Health every process sees

    async def report_problem(self, name: str, problem: str) -> None:
        async with self.transaction() as s:
            existing = await s.get(ServiceHealth, name)
            if existing is None:
                s.add(ServiceHealth(name=name, problem=problem))
            elif existing.problem != problem:
                existing.problem = problem
                s.add(existing)

    async def clear_problem(self, name: str) -> None:
        async with self.transaction() as s:
            await s.exec(delete(ServiceHealth).where(col(ServiceHealth.name) == name))

    async def problem(self, name: str) -> str | None:
        async with self._sessions() as s:
            row = await s.get(ServiceHealth, name)
        return row.problem if row is not None else None


def outbox_figures_query() -> Any:
    """(unsent count, oldest created_at of those still being tried, permanent count) in one row."""
    pending = col(OutboxMessage.permanent).is_(False)
    return select(
        func.count(),
        func.min(case((pending, col(OutboxMessage.created_at)))),
        func.count(case((col(OutboxMessage.permanent).is_(True), 1))),
    ).where(col(OutboxMessage.sent_at).is_(None))
