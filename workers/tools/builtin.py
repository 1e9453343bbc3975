"""The tools every deployment has: read the thread, ask the requester, hand in the work."""

from __future__ import annotations

from typing import Any

from workers.providers.base import ToolSpec
from workers.tools.base import (
    Authority,
    ToolContext,
    ToolInputError,
    ToolResult,
    object_schema,
    require_str,
)
from workers.tools.files import FILES_SCHEMA, handed_in_files

MAX_QUESTION_CHARS = 2_000
MAX_DELIVERABLE_CHARS = 200_000
# The summary is shown in the review prompt next to its buttons; the content carries the rest.
MAX_SUMMARY_CHARS = 1_000
SUMMARY_CUT_MARKER = f" … (summary cut at {MAX_SUMMARY_CHARS:,} characters)"
MAX_THREAD_CHARS = 30_000


class ReadThread:
    spec = ToolSpec(
        name="read_thread",
        description=(
            "Read the Slack thread this work order came from: every message the bot has seen "
            "there, oldest first, with who wrote it."
        ),
        input_schema=object_schema({}, []),
    )
    authority = Authority(summary="reads the order's own Slack thread")

    def describe(self, arguments: dict[str, Any]) -> str:
        return "Reading the thread"

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        order = ctx.order
        if not order.channel or not order.thread_ts:
            return ToolResult("This work order did not come from a Slack thread.")
        messages = await ctx.store.slack.thread_messages(order.channel, order.thread_ts)
        if not messages:
            return ToolResult("The thread has no messages the bot has seen.")
        lines = []
        for message in messages:
            who = f"<@{message.user}>" if message.user else f"bot {message.bot_id or ''}".strip()
            if message.user == order.requester:
                who += " (requester)"
            lines.append(f"[{message.ts}] {who}: {message.text}")
        text = "\n".join(lines)
        if len(text) > MAX_THREAD_CHARS:
            text = "(earlier messages omitted)\n" + text[-MAX_THREAD_CHARS:]
        return ToolResult(text, untrusted_source="the Slack thread")


class AskRequester:
    spec = ToolSpec(
        name="ask_requester",
        description=(
            "Ask the requester a question in the thread when you cannot go on without their "
            "answer. The run pauses until they reply; their reply is this tool's result. "
            "Ask one clear, specific question."
        ),
        input_schema=object_schema(
            {"question": {"type": "string", "description": "The question, in plain words."}},
            ["question"],
        ),
    )
    authority = Authority(side_effects=True, summary="posts a question in the order's thread")

    def describe(self, arguments: dict[str, Any]) -> str:
        return "Asking the requester a question"

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        question = require_str(arguments, "question", max_chars=MAX_QUESTION_CHARS).strip()
        # The question goes out with the park (the agent writes it to the outbox then).
        return ToolResult(f"Asked: {question}", park=True)


class SubmitDeliverable:
    spec = ToolSpec(
        name="submit_deliverable",
        description=(
            "Hand in the finished deliverable. `content` is the deliverable itself in the form "
            "the work order asks for (markdown is fine); `summary` says in one or two sentences "
            f"(at most {MAX_SUMMARY_CHARS} characters) what it is and how it meets the acceptance "
            "criteria. Tables, charts and documents can go with it as `files`. This ends the run."
        ),
        input_schema=object_schema(
            {
                "content": {"type": "string", "description": "The deliverable."},
                "summary": {"type": "string", "description": "One or two sentences."},
                "files": FILES_SCHEMA,
            },
            ["content", "summary"],
        ),
    )
    authority = Authority(side_effects=True, summary="hands in the work for verification")

    def describe(self, arguments: dict[str, Any]) -> str:
        return "Submitting the deliverable"

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        content = require_str(arguments, "content", max_chars=MAX_DELIVERABLE_CHARS)
        summary = arguments.get("summary")
        if summary is not None and not isinstance(summary, str):
            raise ToolInputError("'summary' must be a string")
        files = handed_in_files(arguments.get("files"), ctx.settings.tools.files)
        assert ctx.order.id is not None
        await ctx.store.runs.save_deliverable(
            ctx.order.id,
            tool_use_id=ctx.tool_use_id,
            content=content,
            summary=_summary(summary or ""),
            attempt_id=ctx.attempt_id,
            actor="agent",
            files=files,
        )
        return ToolResult("Deliverable submitted.", finish=True)


def _summary(text: str) -> str:
    """The model's summary within MAX_SUMMARY_CHARS: cut rather than refused, because the work
    is done and a long summary is no reason to spend another model call."""
    text = text.strip()
    if len(text) <= MAX_SUMMARY_CHARS:
        return text
    return text[: MAX_SUMMARY_CHARS - len(SUMMARY_CUT_MARKER)].rstrip() + SUMMARY_CUT_MARKER
