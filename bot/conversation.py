"""The Slack adapter over the intake dialogue: threads in, questions, answers and cards out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import defaultdict
from dataclasses import dataclass

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from workers import queue
from workers.config import Settings
from workers.dialogue import (
    IntakeDialogue,
    session_order_id,
)
from workers.errors import IllegalTransition, OrderMoved
from workers.intake import Draft, IntakeEngine
from workers.models import IntakeSession
from workers.permissions import may_control
from workers.states import TAKES_REPLIES, TERMINAL, IntakeState
from workers.store import Store
from workers.store.outbox import card_note_item
from workers.workorder import WorkOrder

log = logging.getLogger(__name__)

GO_WORDS = frozenset({"go", "start", "go ahead", "start it", "yes go", "ship it"})
CANCEL_WORDS = frozenset({"cancel", "stop", "cancel it", "never mind", "nevermind"})
TZ_CACHE_S = 3600


def normalise_reply(text: str) -> str:
    return re.sub(r"[^\w\s]", "", re.sub(r"<@[^>]+>", "", text)).strip().lower()


def control_refusal(order: WorkOrder, verb: str) -> str:
    return f"Only <@{order.requester}>, who asked for {order.id}, or an admin can {verb} it."


@dataclass(frozen=True)
class Incoming:
    """A message that may start or continue a dialogue."""

    channel: str
    thread_ts: str
    ts: str
    user: str
    text: str
    new_request: bool
    context: str = ""


class Conversations:
    """Drives intake dialogues in Slack threads and controls the resulting draft orders."""

    def __init__(
        self, settings: Settings, *, store: Store, engine: IntakeEngine, client: AsyncWebClient
    ) -> None:
        self.settings = settings
        self.store = store
        self.dialogue = IntakeDialogue(settings, store=store, engine=engine)
        self.client = client
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tz: dict[str, tuple[str, float]] = {}

    # Dialogue

    async def handle(self, msg: Incoming) -> None:
        async with self._locks[(msg.channel, msg.thread_ts)]:
            session = await self.dialogue.session(msg.channel, msg.thread_ts)
            if session is None:
                if not msg.new_request:
                    return
                session = await self.dialogue.open(
                    channel=msg.channel, thread_ts=msg.thread_ts, requester=msg.user
                )
            if msg.user != session.requester:
                return  # others may talk in the thread; only the requester drives the dialogue
            order_id = session_order_id(session)
            if session.state == IntakeState.PROPOSED and order_id is not None:
                if await self._handle_reply_to_card(order_id, msg):
                    return
            elif session.state == IntakeState.CONFIRMED and order_id is not None:
                await self._handle_reply_to_run(order_id, msg)
                return
            elif session.state != IntakeState.OPEN:
                return
            await self._advance(session, msg)

    async def _handle_reply_to_card(self, order_id: str, msg: Incoming) -> bool:
        """'go' starts the proposed order and 'cancel' cancels it; anything else refines the draft."""
        word = normalise_reply(msg.text)
        if word in GO_WORDS:
            await self.start(order_id, user=msg.user, channel=msg.channel)
            return True
        if word in CANCEL_WORDS:
            await self.cancel(order_id, user=msg.user, channel=msg.channel)
            return True
        return False

    async def _handle_reply_to_run(self, order_id: str, msg: Incoming) -> None:
        """While an order runs, the requester's thread replies cancel it or answer its questions."""
        if normalise_reply(msg.text) in CANCEL_WORDS:
            await self.cancel(order_id, user=msg.user, channel=msg.channel)
            return
        order = await self.store.orders.get_order(order_id)
        if order.status in TAKES_REPLIES:
            with contextlib.suppress(OrderMoved):  # it finished since: nothing reads replies now
                await queue.resume_with_reply(
                    self.store, order_id, msg.text, user=msg.user, ts=msg.ts
                )

    async def _advance(self, session: IntakeSession, msg: Incoming) -> None:
        """One step of the dialogue. What it says back (questions, an answer, the card, a
        notice) is written with the step and posted by the deliverer (`bot.intake_replies`),
        so a Slack outage delays it rather than losing it."""
        await self._react(msg.channel, msg.ts, "eyes")
        outcome = await self.dialogue.step(
            session,
            msg.text,
            channel=msg.channel,
            tz=await self.user_tz(msg.user),
            context=msg.context,
            reply_to=msg.ts,
        )
        if isinstance(outcome, Draft):
            await self.dialogue.propose(
                session,
                outcome,
                actor=msg.user,
                channel=msg.channel,
                thread_ts=msg.thread_ts,
                reply_to=msg.ts,
            )

    # Controls (buttons, slash commands and thread replies all end up here)

    async def start(self, order_id: str, *, user: str, channel: str) -> WorkOrder | None:
        order = await self.store.orders.get_order(order_id)
        if not await self._authorised(order, user, channel, "start"):
            return None
        # The card says who started it through the outbox: written with the start, edited in
        # by the deliverer (a failed edit is retried there, not lost here).
        try:
            return await self.dialogue.start(
                order_id,
                actor=user,
                reason="started by requester",
                outbox=[card_note_item(order.id or order_id, "started", actor=user)],
            )
        except IllegalTransition:
            return None  # already started (a double click) or no longer startable

    async def cancel(self, order_id: str, *, user: str, channel: str) -> WorkOrder | None:
        order = await self.store.orders.get_order(order_id)
        if not await self._authorised(order, user, channel, "cancel"):
            return None
        if order.status in TERMINAL:
            return None
        try:
            return await self.dialogue.cancel(
                order_id,
                actor=user,
                reason="cancelled from Slack",
                outbox=[card_note_item(order.id or order_id, "cancelled", actor=user)],
            )
        except IllegalTransition:
            return None

    async def _authorised(self, order: WorkOrder, user: str, channel: str, verb: str) -> bool:
        if may_control(order, user, self.settings):
            return True
        await self.client.chat_postEphemeral(
            channel=channel,
            user=user,
            thread_ts=order.thread_ts,
            text=control_refusal(order, verb),
        )
        return False

    # Slack helpers

    async def user_tz(self, user: str) -> str:
        cached = self._tz.get(user)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        tz = "UTC"
        try:
            response = await self.client.users_info(user=user)
            tz = str(response["user"].get("tz") or "UTC")
        except SlackApiError as exc:
            log.info("users.info failed for %s: %s; assuming UTC", user, exc.response.get("error"))
        self._tz[user] = (tz, time.monotonic() + TZ_CACHE_S)
        return tz

    async def _react(self, channel: str, ts: str, name: str) -> None:
        try:
            await self.client.reactions_add(channel=channel, timestamp=ts, name=name)
        except SlackApiError:
            pass  # a missing reaction is cosmetic (already_reacted, no permission)
