"""What an intake dialogue owes its Slack thread, as outbox items (`workers.store.outbox`).

Each is written in the transaction that records it in the dialogue (or, for the card, that
proposes or changes the order) and sent by the deliverer like every other message, so a reply
the requester is owed survives a Slack outage or a restart and is posted once. The payloads are
the dialogue's words, never Slack blocks: the front door renders them when it sends.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def _place(channel: str, thread_ts: str) -> dict[str, str]:
    return {"channel": channel, "thread_ts": thread_ts}


def questions(
    session_id: int, reply_to: str, *, channel: str, thread_ts: str, asked: Sequence[str]
) -> OutboxItem:
    return OutboxItem(
        QUESTIONS,
        intake_reply_key(session_id, reply_to),
        {**_place(channel, thread_ts), "questions": list(asked)},
    )


def answer(
    session_id: int, reply_to: str, *, channel: str, thread_ts: str, text: str, question: str
) -> OutboxItem:
    """A chat answer; `question` names a long answer's canvas."""
    return OutboxItem(
        ANSWER,
        intake_reply_key(session_id, reply_to),
        {**_place(channel, thread_ts), "text": text, "question": question[:500]},
    )


def notice(
    session_id: int,
    reply_to: str,
    *,
    channel: str,
    thread_ts: str,
    why: str,
    text: str = "",
    order_id: str = "",
) -> OutboxItem:
    """The dialogue could not go on: `why` is LIMITED (`text` says which limit), UNAVAILABLE
    (the model could not be reached) or MOVED (`order_id` was started or cancelled meanwhile)."""
    payload = {**_place(channel, thread_ts), "why": why}
    if text:
        payload["text"] = text
    if order_id:
        payload["order"] = order_id
    return OutboxItem(NOTICE, intake_reply_key(session_id, reply_to), payload)


def card(
    order_id: str,
    revision: str | int,
    *,
    open_points: Sequence[str] | None = None,
    edited_by: str | None = None,
) -> OutboxItem:
    """Show the order's card as it stands when sent: posted the first time, edited after.
    `open_points` are the draft's (None: the dialogue's, read when sent); `edited_by` is who
    changed it by hand (Edit)."""
    payload: dict[str, object] = {}
    if open_points is not None:
        payload["open_points"] = list(open_points)
    if edited_by:
        payload["edited_by"] = edited_by
    return OutboxItem(CARD, card_shown_key(order_id, revision), payload)
