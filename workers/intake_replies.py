"""What an intake dialogue owes its Slack thread, as outbox items (`workers.store.outbox`).

Each is written in the transaction that records it in the dialogue (or, for the card, that
proposes or changes the order) and sent by the deliverer like every other message, so a reply
the requester is owed survives a Slack outage or a restart and is posted once. The payloads are
the dialogue's words, never Slack blocks: the front door renders them when it sends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workers.keys import card_shown_key, intake_reply_key
from workers.store.outbox import OutboxItem

QUESTIONS = "intake_questions"
ANSWER = "intake_answer"
NOTICE = "intake_notice"
CARD = "card_shown"
INTAKE_KINDS = frozenset({QUESTIONS, ANSWER, NOTICE})
"""Replies that belong to a dialogue only (it may have no order yet)."""

# Why a notice was said (the front door words the last two).
LIMITED, UNAVAILABLE, MOVED = "limited", "unavailable", "moved"


@dataclass(frozen=True)
class Replies:
    """What a dialogue in a Slack thread says back to one of the requester's messages
    (`reply_to`, its ts: one reply per message, however often Slack delivers it)."""

    session_id: int
    reply_to: str
    channel: str
    thread_ts: str

    def _item(self, kind: str, **payload: Any) -> OutboxItem:
        where = {"channel": self.channel, "thread_ts": self.thread_ts}
        return OutboxItem(kind, intake_reply_key(self.session_id, self.reply_to), where | payload)

    def questions(self, asked: Sequence[str]) -> OutboxItem:
        return self._item(QUESTIONS, questions=list(asked))

    def answer(self, text: str, *, question: str) -> OutboxItem:
        """A chat answer; `question` names a long answer's canvas."""
        return self._item(ANSWER, text=text, question=question[:500])

    def notice(self, why: str, *, text: str = "", order_id: str = "") -> OutboxItem:
        """The dialogue could not go on: `why` is LIMITED (`text` says which limit),
        UNAVAILABLE (the model could not be reached) or MOVED (`order_id` was started or
        cancelled meanwhile)."""
        extra = ({"text": text} if text else {}) | ({"order": order_id} if order_id else {})
        return self._item(NOTICE, why=why, **extra)


def card(order_id: str, revision: str | int, *, edited_by: str | None = None) -> OutboxItem:
    """Show the order's card as it stands when sent (with its dialogue's open points): posted
    the first time, edited after. `edited_by` is who changed it by hand (Edit)."""
    payload = {"edited_by": edited_by} if edited_by else {}
    return OutboxItem(CARD, card_shown_key(order_id, revision), payload)
