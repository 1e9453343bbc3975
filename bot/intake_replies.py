"""What an intake dialogue says back in its thread, rendered when the deliverer sends it.

The dialogue writes each reply as an outbox row with the step that causes it
(`workers.intake_replies`); this turns the row into a message, posted once per key like every
other message of the one delivery road. Everything the model wrote is shown inert.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from bot.blocks import (
    MARKDOWN_TEXT_MAX,
    MESSAGE_BLOCKS_MAX,
    Block,
    cap_blocks,
    markdown_blocks,
    sections,
)
from bot.deliverable_files import long_text_once
from bot.feedback import chat_subject, feedback_block
from bot.mrkdwn import untrusted, untrusted_markdown
from bot.threads import Thread
from workers import intake_replies
from workers.dialogue import questions_text
from workers.models import OutboxMessage

if TYPE_CHECKING:
    from bot.reporter import SlackReporter

UNAVAILABLE_TEXT = (
    "I couldn't reach the language model just now, so I can't draft this yet. "
    "Reply in this thread to try again."
)


async def send(reporter: SlackReporter, message: OutboxMessage) -> None:
    """Post one reply of a dialogue (questions, a chat answer, a notice) in its thread."""
    payload: dict[str, Any] = dict(message.payload)
    thread = Thread(str(payload["channel"]), str(payload["thread_ts"]))
    if message.kind == intake_replies.QUESTIONS:
        text = questions_message([untrusted(str(q)) for q in payload.get("questions") or []])
        blocks: list[Block] = cap_blocks(sections(text))
    elif message.kind == intake_replies.ANSWER:
        assert message.intake_id is not None
        text, blocks = await _answer(reporter, thread, message.key, payload, message.intake_id)
    elif message.kind == intake_replies.NOTICE:
        text = notice_text(payload)
        blocks = sections(text)
    else:
        raise ValueError(f"not a dialogue's reply: {message.kind!r} ({message.key})")
    await reporter.post_once(thread, key=message.key, purpose="intake", text=text, blocks=blocks)


async def _answer(
    reporter: SlackReporter,
    thread: Thread,
    key: str,
    payload: dict[str, Any],
    session_id: int,
) -> tuple[str, list[Block]]:
    """A chat answer as Markdown, which Slack renders (lists, tables, code). One too long for a
    markdown block goes where a long deliverable goes (a canvas, else a file), and a short
    message links it. The feedback buttons are on the message either way."""
    text = str(payload.get("text", ""))
    buttons = [feedback_block(chat_subject(session_id))]
    shown = untrusted_markdown(text)
    if len(shown) <= MARKDOWN_TEXT_MAX:
        return untrusted(text), markdown_blocks(shown) + buttons
    link = await long_text_once(
        reporter,
        thread,
        key=key,
        title=answer_title(str(payload.get("question", ""))),
        text=text,
        filename="answer.md",
    )
    line = f"The answer is long, so it is in {link}."
    return line, cap_blocks(sections(line), MESSAGE_BLOCKS_MAX - len(buttons)) + buttons


def notice_text(payload: dict[str, Any]) -> str:
    why = payload.get("why")
    if why == intake_replies.UNAVAILABLE:
        return UNAVAILABLE_TEXT
    if why == intake_replies.MOVED:
        return (
            f"{payload.get('order', 'The order')} has already started or was cancelled, "
            "so it can no longer be changed."
        )
    return str(payload.get("text", ""))


def questions_message(questions: list[str]) -> str:
    return (
        f"A few questions before I draft this:\n{questions_text(questions)}\n"
        "_Reply in this thread._"
    )


def answer_title(question: str) -> str:
    """A long answer's canvas (or file) title: the question, without mentions."""
    asked = " ".join(re.sub(r"<[@#!][^>]*>", " ", question).split())
    return f"Answer: {asked}" if asked else "Answer"
