"""Model output posted to Slack cannot ping or disguise: broadcasts, group mentions and links
with a misleading label in a chat answer, a drafted card, a question, a deliverable, the review
prompt and the verifier's reasons reach the thread inert. End to end through the fake Slack."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from bot.ids import APPROVE_ACTION, CHANGES_ACTION, CHANGES_CALLBACK
from tests.fakes.anthropic import Reply
from tests.fakes.openai import Reply as OpenAIReply
from tests.support.inert import live_fields
from tests.support.intake import chat
from tests.support.pipeline import Pipeline, PipelineFactory, verdicts
from workers.workorder import Status

pytestmark = pytest.mark.front_door  # SQLite only: tests/support/databases.py

EVIL = (
    "Hey <!channel> and <!subteam^S1|@eng>, log in at <https://evil.example|https://bank.example>"
)
LIVE = ("<!channel>", "<!subteam", "<!here", "|https://bank.example>", "<https://evil.example")


@pytest.fixture
async def pipe(pipeline: PipelineFactory) -> AsyncIterator[Pipeline]:
    async with pipeline() as p:
        yield p


def posted(pipe: Pipeline) -> list[str]:
    """Everything the bot sent to Slack as mrkdwn: text and blocks of posts and updates."""
    return [
        c.args.get("text", "") + json.dumps(c.args.get("blocks") or [], ensure_ascii=False)
        for c in pipe.slack.calls_to("chat.postMessage") + pipe.slack.calls_to("chat.update")
    ]


def assert_inert(pipe: Pipeline, needle: str) -> None:
    carrying = [p for p in posted(pipe) if needle in p]
    assert carrying, f"nothing posted with {needle!r}"
    for text in posted(pipe):
        for live in LIVE:
            assert live not in text, f"{live} is live in {text[:300]}"
    shown = carrying[-1]
    assert "@\u200bchannel" in shown and "@\u200beng" in shown
    assert "https://bank.example (https://evil.example)" in shown, "the real target is shown"


async def test_chat_answer_card_and_question_are_inert(pipe: Pipeline) -> None:
    pipe.anthropic.script(chat(f"Chat: {EVIL}"))
    await pipe.bot.sender.event(pipe.bot.sender.app_mention("<@UBOT> what can you do?"))
    await pipe.post("Chat: Hey")
    assert_inert(pipe, "Chat: Hey")

    order_id = await pipe.order_started(
        Reply.tool("ask_requester", {"question": f"Question: {EVIL}"}),
        goal=f"Goal: {EVIL}",
        acceptance_criteria=[f"Criterion: {EVIL}"],
    )
    assert_inert(pipe, "Goal: Hey")
    assert_inert(pipe, "Criterion: Hey")
    await pipe.status_of(order_id, Status.WAITING_FOR_REQUESTER)
    await pipe.post("Question: Hey")
    assert_inert(pipe, "Question: Hey")


async def test_deliverable_review_prompt_and_verifier_reasons_are_inert(pipe: Pipeline) -> None:
    pipe.openai.script(
        OpenAIReply.tool(
            "record_verdicts",
            {
                "verdicts": [
                    {"index": i, "passed": True, "reason": f"Reason: {EVIL}"} for i in (1, 2, 3)
                ]
            },
        )
    )
    order_id = await pipe.order_started(
        Reply.tool(
            "submit_deliverable",
            {"content": f"Deliverable: {EVIL}", "summary": f"Summary: {EVIL}"},
        )
    )
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    await pipe.post(APPROVE_ACTION)
    assert_inert(pipe, "Deliverable: Hey")
    assert_inert(pipe, "Reason: Hey")
    review = json.dumps((await pipe.post(APPROVE_ACTION))["blocks"], ensure_ascii=False)
    assert "Summary: Hey @\u200bchannel" in review


async def test_reviewer_feedback_in_the_decision_line_is_inert(pipe: Pipeline) -> None:
    """Issue 19, item 13: a reviewer's free text is shown, never parsed as a broadcast."""
    pipe.openai.script(verdicts(True, True, True), verdicts(True, True, True))
    order_id = await pipe.order_started(
        Reply.tool("submit_deliverable", {"content": "v1", "summary": "First draft."})
    )
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    await pipe.click(CHANGES_ACTION, order_id, "U7")
    [opened] = await pipe.slack.wait_for("views.open")
    pipe.anthropic.script(
        Reply.tool("submit_deliverable", {"content": "v2", "summary": "Second draft."})
    )
    feedback = pipe.bot.sender.view_submission(
        CHANGES_CALLBACK,
        {"feedback": {"feedback": f"Feedback: {EVIL}"}},
        user_id="U7",
        private_metadata=opened.args["view"]["private_metadata"],
    )
    assert (await pipe.bot.sender.action(feedback))[0] == 200
    await pipe.update("Changes requested* by <@U7>")
    assert_inert(pipe, "Feedback: Hey")


async def test_a_model_chosen_url_and_drafted_title_are_inert_everywhere(pipe: Pipeline) -> None:
    """Issue 19, item 4: the status line names the host the model chose, the card's fallback
    text carries the drafted title, `/delegate list` and `status` repeat it: none of them ping."""
    title = "Urgent <!channel> <!subteam^S1|@eng>"
    pipe.openai.script(verdicts(True, True, True))
    # Each step stays on the status line until the test has seen it (a newer status replaces
    # an unsent older one, so a fast run could show only its last step).
    second, third = (
        Reply.tool("web_fetch", {"url": "http://<!here>@<!everyone>/x"}),
        Reply.tool("submit_deliverable", {"content": "done", "summary": "Done."}),
    )
    second.hold, third.hold = asyncio.Event(), asyncio.Event()
    order_id = await pipe.order_started(
        Reply.tool("web_fetch", {"url": "http://<!channel>/x"}), second, third, title=title
    )
    await pipe.shown("Reading @\u200bchannel")
    second.hold.set()
    await pipe.shown("Reading @\u200beveryone")
    third.hold.set()
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    for call in pipe.slack.calls_to("chat.postMessage") + pipe.slack.calls_to("chat.update"):
        assert not list(live_fields(call.args)), call.args
    assert any("Urgent @\u200bchannel" in c.args.get("text", "") for c in pipe.slack.calls)

    for command in ("list", f"status {order_id}"):
        await pipe.bot.sender.command(text=command, response_url=pipe.slack.response_url(command))
    await pipe.slack.wait_until(lambda: len(pipe.slack.responses) == 2)
    for response in pipe.slack.responses:
        assert not list(live_fields(response.body)), response.body
        assert "Urgent @\u200bchannel" in json.dumps(response.body, ensure_ascii=False)
