"""The Slack adapter over the intake dialogue: threads in, questions, answers and cards out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.blocks import (
    MARKDOWN_TEXT_MAX,
    MESSAGE_BLOCKS_MAX,
    MESSAGE_TEXT_MAX,
    Block,
    cap_blocks,
    markdown_blocks,
    sections,
    truncate,
)
from bot.cards import card_text, render_card
from bot.deliverable_files import long_text_link
from bot.feedback import chat_subject, feedback_block
from bot.mrkdwn import untrusted, untrusted_markdown
from workers import queue
from workers.config import Settings
from workers.dialogue import (
    IntakeDialogue,
    Limited,
    Unavailable,
    questions_text,
    session_order_id,
)
from workers.errors import IllegalTransition, OrderMoved
from workers.intake import ChatAnswer, Draft, IntakeEngine, Questions
from workers.keys import card_key
from workers.models import IntakeSession, SlackMessage
from workers.permissions import may_control
from workers.states import TAKES_REPLIES, TERMINAL, IntakeState
from workers.store import Store
from workers.store.outbox import card_note_item
from workers.workorder import WorkOrder, format_order_id

log = logging.getLogger(__name__)

GO_WORDS = frozenset({"go", "start", "go ahead", "start it", "yes go", "ship it"})
CANCEL_WORDS = frozenset({"cancel", "stop", "cancel it", "never mind", "nevermind"})
TZ_CACHE_S = 3600
# How long a redraw waits for a card another handler is posting right now.
CARD_WAIT_S = 5.0


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
        self._owner = f"intake:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
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
        await self._react(msg.channel, msg.ts, "eyes")
        outcome = await self.dialogue.step(
            session,
            msg.text,
            channel=msg.channel,
            tz=await self.user_tz(msg.user),
            context=msg.context,
        )
        if isinstance(outcome, Limited):
            await self._post(msg.channel, msg.thread_ts, outcome.message)
        elif isinstance(outcome, Unavailable):
            await self._post(
                msg.channel,
                msg.thread_ts,
                "I couldn't reach the language model just now, so I can't draft this yet. "
                "Reply in this thread to try again.",
            )
        elif isinstance(outcome, ChatAnswer):
            assert session.id is not None
            await self._answer(
                msg.channel,
                msg.thread_ts,
                outcome.text,
                question=msg.text,
                extra=[feedback_block(chat_subject(session.id))],
            )
        elif isinstance(outcome, Questions):
            await self._post(
                msg.channel,
                msg.thread_ts,
                _questions_message([untrusted(q) for q in outcome.questions]),
            )
        else:
            await self._propose(session, outcome, msg)

    async def _propose(self, session: IntakeSession, draft: Draft, msg: Incoming) -> None:
        order = await self.dialogue.propose(
            session, draft, actor=msg.user, channel=msg.channel, thread_ts=msg.thread_ts
        )
        if order is not None:
            await self.show_card(order, open_points=draft.open_points)
        elif session.order_id is not None:
            # Started or cancelled since this message was read: the order keeps what it had.
            await self._post(
                msg.channel,
                msg.thread_ts,
                f"{format_order_id(session.order_id)} has already started or was cancelled, "
                "so it can no longer be changed.",
            )

    # Card

    async def show_card(
        self, order: WorkOrder, *, open_points: list[str] | None = None, note: str = ""
    ) -> None:
        """Post the order's card in its thread, or update it in place if it was posted before.
        (Who started or cancelled the order is edited in by the deliverer: `card_note_item`.)"""
        assert order.id and order.channel
        if open_points is None:
            open_points = await self.dialogue.open_points(order.id)
        blocks = render_card(order, self.settings, open_points=open_points, note=note)
        key = card_key(order.id)
        # Claimed before it is posted: a Start pressed the moment the card shows finds it being
        # posted (and its line waits for the ts) rather than no card at all.
        state, posted = await self.store.slack.claim_slack_message(
            key=key, purpose="card", channel=order.channel, owner=self._owner, order=order.id
        )
        if state == "busy":
            being_posted = await self._posted_card(key)
            if being_posted is None:
                log.warning("the card is still being posted; not redrawn", extra={"order": order.id})
                return
            state, posted = "posted", being_posted
        if state == "posted":
            await self.client.chat_update(
                channel=posted.channel, ts=posted.ts or "", text=card_text(order), blocks=blocks
            )
            return
        try:
            response = await self.client.chat_postMessage(
                channel=order.channel,
                thread_ts=order.thread_ts,
                text=card_text(order),
                blocks=blocks,
            )
        except BaseException:
            await self.store.slack.release_slack_message(key, self._owner)
            raise
        await self.store.slack.save_slack_message(
            key=key,
            purpose="card",
            channel=str(response["channel"]),
            ts=str(response["ts"]),
            order=order.id,
        )

    async def _posted_card(self, key: str) -> SlackMessage | None:
        """The card another handler is posting, once it has its ts (None if it takes long)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CARD_WAIT_S):
                while True:
                    record = await self.store.slack.slack_message(key)
                    if record is not None and record.ts:
                        return record
                    await asyncio.sleep(0.1)
        return None

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

    async def _post(
        self, channel: str, thread_ts: str, text: str, *, extra: list[Block] | None = None
    ) -> None:
        extra = extra or []
        blocks = cap_blocks(sections(text), MESSAGE_BLOCKS_MAX - len(extra)) + extra
        await self.client.chat_postMessage(
            channel=channel,
            thread_ts=thread_ts,
            text=truncate(text, MESSAGE_TEXT_MAX),
            blocks=blocks,
        )

    async def _answer(
        self,
        channel: str,
        thread_ts: str,
        text: str,
        *,
        question: str,
        extra: list[Block] | None = None,
    ) -> None:
        """A chat answer as Markdown, which Slack renders (lists, tables, code). One too long
        for a markdown block goes where a long deliverable goes (a canvas, else a file), and a
        short message links it. `extra` (the feedback buttons) is on the message either way."""
        shown = untrusted_markdown(text)
        if len(shown) > MARKDOWN_TEXT_MAX:
            link = await long_text_link(
                self.client,
                channel=channel,
                thread_ts=thread_ts,
                title=answer_title(question),
                text=text,
                filename="answer.md",
            )
            await self._post(
                channel, thread_ts, f"The answer is long, so it is in {link}.", extra=extra
            )
            return
        await self.client.chat_postMessage(
            channel=channel,
            thread_ts=thread_ts,
            text=truncate(untrusted(text), MESSAGE_TEXT_MAX),
            blocks=markdown_blocks(shown) + (extra or []),
        )

    async def _react(self, channel: str, ts: str, name: str) -> None:
        try:
            await self.client.reactions_add(channel=channel, timestamp=ts, name=name)
        except SlackApiError:
            pass  # a missing reaction is cosmetic (already_reacted, no permission)


def answer_title(question: str) -> str:
    """A long answer's canvas (or file) title: the question, without mentions."""
    asked = " ".join(re.sub(r"<[@#!][^>]*>", " ", question).split())
    return f"Answer: {asked}" if asked else "Answer"


def _questions_message(questions: list[str]) -> str:
    return (
        f"A few questions before I draft this:\n{questions_text(questions)}\n"
        "_Reply in this thread._"
    )
