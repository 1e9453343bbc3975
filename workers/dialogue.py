"""The intake dialogue as a service: one session per conversation, from a request to a started order.

Slack threads and the terminal console are thin adapters over `IntakeDialogue`: they say what
the requester wrote and show what comes back. The service keeps the session (transcript, rounds,
state), asks the intake model within the round limits, proposes a draft as an order awaiting
confirmation, and starts it only through `queue.enqueue`, so every surface queues an order with
the priority of its workload class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from workers import intake_replies, queue
from workers.budget import quota_week, usd_to_micro
from workers.config import Settings
from workers.errors import OrderMoved
from workers.intake import (
    ChatAnswer,
    Draft,
    IntakeEngine,
    IntakeUnavailable,
    Questions,
    RequesterContext,
    Turn,
)
from workers.models import IntakeSession, utcnow
from workers.states import EDITABLE, IntakeKind, IntakeState
from workers.store import EDITABLE_FIELDS, Store
from workers.store.outbox import OutboxItem
from workers.workorder import Status, WorkOrder, format_order_id, parse_order_id

# What a refined draft replaces on the order already proposed in the conversation: not what
# the requester set by hand (context, escalation contact) nor the team, and not the reviewers:
# once the card is posted, only an admin changes who reviews (Edit).
REFINABLE_FIELDS = EDITABLE_FIELDS - {"context", "escalation_contact", "team", "verification"}
# What proposing a draft changes in its dialogue.
_PROPOSAL_FIELDS = ("kind", "state", "order_id", "draft", "transcript")


@dataclass(frozen=True)
class Unavailable:
    """The intake model could not be reached; the requester's message is kept for the next try."""

    reason: str


@dataclass(frozen=True)
class Limited:
    """The model was not called: the person's hourly intake limit or their team's weekly quota
    is used up. `message` says which, and when it frees up."""

    message: str


StepOutcome = ChatAnswer | Questions | Draft | Unavailable | Limited


def questions_text(questions: list[str]) -> str:
    return "\n".join(f"{i}. {q}" for i, q in enumerate(questions, 1))


def draft_summary(order: WorkOrder) -> str:
    """What a draft says, for the transcript: a follow-up ("make the budget $5 instead") is
    read against it."""
    criteria = "; ".join(order.acceptance_criteria)
    return (
        f"{order.title}. Deliverable: {order.deliverable} Criteria: {criteria}. "
        f"Workload class: {order.workload_class.value}; budget: {order.budget.describe()}; "
        f"policy: {order.authority_policy}."
    )


def session_order_id(session: IntakeSession) -> str | None:
    """The id of the order this conversation proposed, if any."""
    return format_order_id(session.order_id) if session.order_id is not None else None


async def open_points(store: Store, order_id: str) -> list[str]:
    """What the order's dialogue left open (its card lists them); none for an order without one."""
    session = await store.slack.intake_for_order(order_id)
    return list((session.draft or {}).get("open_points", [])) if session else []


def session_context(session: IntakeSession) -> str:
    """The context the conversation started with (e.g. the message a shortcut was used on)."""
    return str((session.draft or {}).get("context", ""))


class IntakeDialogue:
    """Holds intake conversations: sessions, model steps, proposals, start and cancel."""

    def __init__(self, settings: Settings, *, store: Store, engine: IntakeEngine) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine

    async def open(
        self, *, channel: str, thread_ts: str, requester: str, surface: str = "slack"
    ) -> IntakeSession:
        session, _ = await self.store.slack.open_intake(
            channel=channel, thread_ts=thread_ts, requester=requester, surface=surface
        )
        return session

    async def session(self, channel: str, thread_ts: str) -> IntakeSession | None:
        return await self.store.slack.intake_session(channel, thread_ts)

    async def step(
        self,
        session: IntakeSession,
        text: str,
        *,
        channel: str | None,
        tz: str = "UTC",
        context: str = "",
        reply_to: str | None = None,
    ) -> StepOutcome:
        """Record the requester's message and ask the model what to say next.

        A chat answer closes the session; questions count a round; a draft is returned for the
        adapter to `propose` (or, in the console, to confirm first). Both are recorded.

        In a Slack thread (`reply_to`: the requester's message's ts) what the outcome owes the
        thread is written with it, for the deliverer to post: the console prints it instead.
        """
        say = self._replies(session, reply_to)
        limited = await self._limit(session.requester)
        if limited is not None:
            if say is not None:
                await self.store.outbox.add_intake_replies(
                    say.session_id, [say.notice(intake_replies.LIMITED, text=limited.message)]
                )
            return limited
        self._record(session, "requester", text)
        if context:
            session.draft = {**(session.draft or {}), "context": context}
        turns = [Turn(t["role"], t["text"]) for t in session.transcript]
        ctx = RequesterContext(
            user_id=session.requester,
            channel=channel,
            tz=tz,
            context=context or session_context(session),
        )
        try:
            outcome = await self.engine.step(turns, ctx, rounds_so_far=session.rounds)
        except IntakeUnavailable as exc:
            await self.store.slack.save_intake(
                session,
                replies=[say.notice(intake_replies.UNAVAILABLE)] if say is not None else [],
            )
            return Unavailable(str(exc))
        if isinstance(outcome, ChatAnswer):
            session.kind, session.state = IntakeKind.CHAT, IntakeState.CLOSED
            self._record(session, "delegate", outcome.text)
            await self.store.slack.save_intake(
                session,
                replies=[say.answer(outcome.text, question=text)] if say is not None else [],
            )
        elif isinstance(outcome, Questions):
            session.rounds += 1
            self._record(session, "delegate", questions_text(outcome.questions))
            await self.store.slack.save_intake(
                session,
                replies=[say.questions(outcome.questions)] if say is not None else [],
            )
        return outcome

    @staticmethod
    def _replies(session: IntakeSession, reply_to: str | None) -> intake_replies.Replies | None:
        if session.surface != "slack" or reply_to is None:
            return None
        assert session.id is not None
        return intake_replies.Replies(session.id, reply_to, session.channel, session.thread_ts)

    async def _limit(self, requester: str) -> Limited | None:
        """Intake spends the team's money too: refuse before calling the model when the person
        asked too often this hour or the team's weekly quota is gone. An admitted request takes
        its slot atomically here, before the model is called."""
        now = utcnow()
        limit = self.settings.intake.max_requests_per_user_per_hour
        team = self.settings.team_of(requester)
        quota = usd_to_micro(self.settings.teams[team].weekly_usd)
        if await self.store.ledger.team_week_used(team, quota_week(now)) >= quota:
            return Limited(
                f"Team {team} has used its ${self.settings.teams[team].weekly_usd:.2f} for this "
                "week, so I can't take new requests until Monday (00:00 UTC). A lead or an admin "
                "can raise the quota."
            )
        # Taken last, so a request refused for quota does not use up one of the hour's slots.
        if not await self.store.ledger.take_intake_slot(
            requester, since=now - timedelta(hours=1), limit=limit, now=now
        ):
            return Limited(
                f"You have made {limit} requests in the last hour, the most one person may make "
                "(intake.max_requests_per_user_per_hour). Please try again a little later."
            )
        return None

    async def propose(
        self,
        session: IntakeSession,
        draft: Draft,
        *,
        actor: str,
        channel: str | None = None,
        thread_ts: str | None = None,
        reply_to: str | None = None,
    ) -> WorkOrder | None:
        """Put the draft up for confirmation: a new order, or the conversation's order refined.
        In a Slack thread the card showing it is written with the change (and, with
        `reply_to`, why a draft can no longer change).

        None if the conversation's order has moved on (started or cancelled) meanwhile.
        """
        order = draft.order.model_copy(update={"channel": channel, "thread_ts": thread_ts})
        existing_id = session_order_id(session)
        shows_card = session.surface == "slack" and channel is not None
        if existing_id is None:
            order = await self.store.orders.create_order(order, actor=actor)
            assert order.id
            order = await self.store.orders.transition(
                order.id, Status.AWAITING_CONFIRMATION, actor="intake", reason="draft proposed"
            )
            self._proposed(session, order, draft)
            # The card is written with the dialogue that proposes it: a Start pressed the
            # moment it shows finds the dialogue proposing, never a save of it still to come.
            assert order.id
            card = intake_replies.card(order.id, "new")
            await self.store.slack.save_intake(session, replies=[card] if shows_card else [])
            return order
        # The refined order and its dialogue are written in one commit that checks the order
        # still waits for Start: a Start landing in between leaves both as Start left them.
        before = {name: getattr(session, name) for name in _PROPOSAL_FIELDS}
        self._proposed(session, order.model_copy(update={"id": existing_id}), draft)
        # One redraw per refinement: the transcript grows with each.
        card = intake_replies.card(existing_id, len(session.transcript))
        try:
            return await self.store.orders.update_order(
                existing_id,
                actor=actor,
                expected=EDITABLE,
                reason="refined in thread",
                intake=session,
                outbox=[card] if shows_card else [],
                **order.model_dump(include=set(REFINABLE_FIELDS)),
            )
        except OrderMoved:
            for name, value in before.items():
                setattr(session, name, value)
            say = self._replies(session, reply_to)
            if say is not None:
                await self.store.outbox.add_intake_replies(
                    say.session_id, [say.notice(intake_replies.MOVED, order_id=existing_id)]
                )
            return None

    def _proposed(self, session: IntakeSession, order: WorkOrder, draft: Draft) -> None:
        assert order.id
        session.kind, session.state = IntakeKind.DELEGATION, IntakeState.PROPOSED
        session.order_id = parse_order_id(order.id)
        session.draft = {"open_points": draft.open_points, "context": session_context(session)}
        self._record(session, "delegate", f"Drafted {order.id}: {draft_summary(order)}")

    async def present(self, session: IntakeSession, draft: Draft) -> None:
        """Record a draft shown for confirmation before it is proposed (the console asks
        first), so that the requester's next message refines it."""
        self._record(session, "delegate", f"Drafted: {draft_summary(draft.order)}")
        await self.store.slack.save_intake(session)

    async def start(
        self, order_id: str, *, actor: str, reason: str, outbox: Sequence[OutboxItem] = ()
    ) -> WorkOrder:
        """Confirm the order: queue it with its class's priority, and write what the start owes
        people (`outbox`) with it. Raises IllegalTransition if it was started already (a
        double click) or can no longer be started."""
        # Confirmed in the commit that queues it: a worker may claim and run it at once, and a
        # reply read against a dialogue still proposing a draft would go to the draft.
        return await queue.enqueue(
            self.store,
            self.settings,
            order_id,
            actor=actor,
            reason=reason,
            intake=IntakeState.CONFIRMED,
            outbox=outbox,
        )

    async def cancel(
        self, order_id: str, *, actor: str, reason: str, outbox: Sequence[OutboxItem] = ()
    ) -> WorkOrder:
        """Cancel the order (writing what the cancel owes people, `outbox`, with it) and close
        its conversation. Raises IllegalTransition if finished."""
        order = await queue.cancel(self.store, order_id, actor=actor, reason=reason, outbox=outbox)
        await self._set_state(order_id, IntakeState.CLOSED)
        return order

    async def close(self, session: IntakeSession, *, kind: IntakeKind | None = None) -> None:
        """End a conversation that produced no order (e.g. a draft declined in the console)."""
        if kind:
            session.kind = kind
        session.state = IntakeState.CLOSED
        await self.store.slack.save_intake(session)

    async def _set_state(self, order_id: str, state: IntakeState) -> None:
        session = await self.store.slack.intake_for_order(order_id)
        if session is not None:
            session.state = state
            await self.store.slack.save_intake(session)

    @staticmethod
    def _record(session: IntakeSession, role: str, text: str) -> None:
        session.transcript = [*session.transcript, {"role": role, "text": text}]
