"""Slack's feedback buttons (👍 / 👎) on deliverables and chat answers: the block that carries
them, and the presses.

Anyone who can see the message may say what they think of it: a press from the order's (or the
chat answer's) own channel is from someone who sees its thread; from anywhere else, only the
people on the order (`workers.permissions.may_view`) or the person who asked. A second press by
the same person replaces their first. A press is acknowledged by Slack's own button state and
nothing else: no message in the channel, and an ephemeral only to say a press was refused.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.blocks import BUTTON_TEXT_MAX, Block, plain
from bot.ids import CHAT_SUBJECT, FEEDBACK_ACTION, feedback_value, parse_feedback_value
from workers.config import Settings
from workers.errors import NotFound
from workers.permissions import may_view
from workers.store import Store
from workers.store.feedback import Rating

log = logging.getLogger(__name__)

REFUSED = "You can only give feedback on work orders and answers you can see."


def chat_subject(session_id: int) -> str:
    return f"{CHAT_SUBJECT}{session_id}"


def feedback_block(subject: str) -> Block:
    """A `context_actions` block with the feedback buttons for `subject` (an order id such as
    'WO-12', or `chat_subject(...)`). No block_id: Slack makes one per message and iteration."""

    def side(emoji: str, rating: str, label: str) -> dict[str, Any]:
        return {
            "text": plain(emoji, BUTTON_TEXT_MAX),
            "value": feedback_value(subject, rating),
            "accessibility_label": label,
        }

    return {
        "type": "context_actions",
        "elements": [
            {
                "type": "feedback_buttons",
                "action_id": FEEDBACK_ACTION,
                "positive_button": side("👍", "up", "This was helpful"),
                "negative_button": side("👎", "down", "This was not helpful"),
            }
        ],
    }


class FeedbackPresses:
    def __init__(self, settings: Settings, *, store: Store) -> None:
        self.settings = settings
        self.store = store

    async def press(self, value: str, *, user: str, channel: str | None) -> str | None:
        """Store the press; None when stored, else why it was not."""
        parsed = parse_feedback_value(value)
        if parsed is None:
            return REFUSED
        subject, rating_text = parsed
        rating: Rating = "up" if rating_text == "up" else "down"
        try:
            if subject.startswith(CHAT_SUBJECT):
                number = subject.removeprefix(CHAT_SUBJECT)
                if not (number.isascii() and number.isdigit() and len(number) <= 18):
                    return REFUSED
                session = await self.store.feedback.intake_session_by_id(int(number))
                if session is None or (channel != session.channel and user != session.requester):
                    return REFUSED
                await self.store.feedback.record_chat_feedback(int(number), user=user, rating=rating)
                return None
            order = await self.store.orders.get_order(subject)
        except (NotFound, ValueError):
            return REFUSED
        if channel != order.channel and not may_view(order, user, self.settings):
            return REFUSED
        await self.store.feedback.record_order_feedback(subject, user=user, rating=rating)
        return None


def register(app: AsyncApp, presses: FeedbackPresses) -> None:
    @app.action(FEEDBACK_ACTION)
    async def on_feedback(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], client: AsyncWebClient
    ) -> None:
        await ack()
        user = body["user"]["id"]
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get(
            "channel_id"
        )
        problem = await presses.press(str(action.get("value") or ""), user=user, channel=channel)
        if problem is None:
            return
        thread = (body.get("message") or {}).get("thread_ts")
        try:
            await client.chat_postEphemeral(
                channel=channel or user, user=user, text=problem, thread_ts=thread
            )
        except SlackApiError as exc:
            log.info("could not say a feedback press was refused: %s", exc.response.get("error"))
