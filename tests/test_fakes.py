"""Proves the wire-level fakes answer the real Slack, Anthropic and OpenAI SDK clients."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest
import pytest_asyncio
from aiohttp import web
from anthropic.types import TextBlock, ToolUseBlock
from openai.types.responses import ResponseOutputMessage, ResponseOutputRefusal
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.anthropic import FakeAnthropic, ToolUse
from tests.fakes.anthropic import Reply as ClaudeReply
from tests.fakes.openai import FakeOpenAI, ToolCall
from tests.fakes.openai import Reply as GPTReply
from tests.fakes.slack import FakeSlack, SlackSender

SIGNING_SECRET = "test-signing-secret"
MODEL = "claude-sonnet-4-6"
GPT = "gpt-4o-mini"


# ---------------------------------------------------------------------- Slack


def slack_client(fake: FakeSlack, **kwargs: Any) -> AsyncWebClient:
    return AsyncWebClient(token=fake.token, base_url=fake.api_url, **kwargs)


async def test_slack_auth_test_reports_identity_and_scopes(fake_slack: FakeSlack) -> None:
    resp = await slack_client(fake_slack).auth_test()
    assert (resp["user_id"], resp["bot_id"], resp["team_id"]) == ("UBOT", "BBOT", "T1")
    assert "chat:write" in resp.headers["x-oauth-scopes"].split(",")
    assert fake_slack.last_call("auth.test").token == "xoxb-test"


async def test_slack_post_update_and_replies_share_state(fake_slack: FakeSlack) -> None:
    client = slack_client(fake_slack)
    root = fake_slack.add_message("C1", "please summarise", user="U1")
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "working"}}]
    posted = await client.chat_postMessage(
        channel="C1", thread_ts=root["ts"], text="working", blocks=blocks
    )
    assert posted["channel"] == "C1" and posted["message"]["blocks"] == blocks
    assert float(posted["ts"]) > float(root["ts"])
    updated = await client.chat_update(channel="C1", ts=posted["ts"], text="done", blocks=[])
    assert updated["message"]["text"] == "done"

    replies = await client.conversations_replies(channel="C1", ts=root["ts"])
    assert [m["text"] for m in replies["messages"]] == ["please summarise", "done"]
    assert replies["messages"][0]["reply_count"] == 1
    assert fake_slack.calls_to("chat.postMessage")[0].args["blocks"] == blocks


async def test_slack_accepts_form_and_query_arguments(fake_slack: FakeSlack) -> None:
    client = slack_client(fake_slack)
    blocks = [{"type": "divider"}]
    form = {"channel": "C1", "text": "x", "blocks": json.dumps(blocks)}
    posted = await client.api_call("chat.postMessage", data=form)
    await client.api_call("chat.update", params={"channel": "C1", "ts": posted["ts"], "text": "y"})
    (first,) = fake_slack.calls_to("chat.postMessage")
    assert first.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert first.args["blocks"] == blocks
    assert fake_slack.messages_in("C1")[0]["text"] == "y"


async def test_slack_rate_limit_is_retried_by_sdk_handler(fake_slack: FakeSlack) -> None:
    fake_slack.fail_next("chat.postMessage", status=429, retry_after=0)
    client = slack_client(
        fake_slack, retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)]
    )
    resp = await client.chat_postMessage(channel="C1", text="hi")
    assert resp["ok"]
    calls = fake_slack.calls_to("chat.postMessage")
    assert [c.status for c in calls] == [429, 200]
    assert calls[0].response == {"ok": False, "error": "ratelimited"}


async def test_slack_rate_limit_sends_retry_after_header(fake_slack: FakeSlack) -> None:
    fake_slack.fail_next("chat.update", status=429, retry_after=7)
    with pytest.raises(SlackApiError) as info:
        await slack_client(fake_slack).chat_update(channel="C1", ts="1.0", text="x")
    assert info.value.response.status_code == 429
    assert info.value.response.headers["Retry-After"] == "7"
    assert info.value.response["error"] == "ratelimited"


async def test_slack_server_error_surfaces_without_retry(fake_slack: FakeSlack) -> None:
    fake_slack.fail_next("chat.postMessage", status=500, times=2)
    client = slack_client(fake_slack)
    with pytest.raises(SlackApiError) as info:
        await client.chat_postMessage(channel="C1", text="hi")
    assert info.value.response.status_code == 500
    assert len(fake_slack.calls_to("chat.postMessage")) == 1
    fake_slack.fail_next("chat.postMessage", status=200, error="channel_not_found")
    with pytest.raises(SlackApiError):  # second injected 500 still queued
        await client.chat_postMessage(channel="C1", text="hi")
    with pytest.raises(SlackApiError) as info:
        await client.chat_postMessage(channel="C1", text="hi")
    assert info.value.response["error"] == "channel_not_found"


async def test_slack_answers_writes_into_an_archived_channel_is_archived(
    fake_slack: FakeSlack,
) -> None:
    client = slack_client(fake_slack)
    root = await client.chat_postMessage(channel="C2", text="before")
    fake_slack.archived.add("C2")
    for write in (
        client.chat_postMessage(channel="C2", text="hi", thread_ts=root["ts"]),
        client.chat_update(channel="C2", ts=root["ts"], text="edited"),
    ):
        with pytest.raises(SlackApiError) as info:
            await write
        assert info.value.response["error"] == "is_archived"
    replies = await client.conversations_replies(channel="C2", ts=root["ts"])  # still readable
    assert [m["text"] for m in replies["messages"]] == ["before"]
    assert (await client.chat_postMessage(channel="C1", text="elsewhere"))["ok"]


async def test_slack_files_upload_v2_end_to_end(fake_slack: FakeSlack) -> None:
    client = slack_client(fake_slack)
    root = await client.chat_postMessage(channel="C1", text="report coming")
    resp = await client.files_upload_v2(
        channel="C1",
        thread_ts=root["ts"],
        content="hello,world\n",
        filename="report.csv",
        title="Report",
        initial_comment="here you go",
    )
    file_id = resp["file"]["id"]
    assert fake_slack.files[file_id]["content"] == b"hello,world\n"
    assert resp["file"]["title"] == "Report"
    thread = fake_slack.messages_in("C1", root["ts"])
    assert thread[-1]["text"] == "here you go" and thread[-1]["files"][0]["id"] == file_id


async def test_slack_bad_or_missing_token_refused(fake_slack: FakeSlack) -> None:
    with pytest.raises(SlackApiError) as info:
        await AsyncWebClient(token="xoxb-wrong", base_url=fake_slack.api_url).auth_test()
    assert info.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as info:
        await AsyncWebClient(base_url=fake_slack.api_url).chat_postMessage(channel="C", text="x")
    assert info.value.response["error"] == "not_authed"


async def _slack_error(call: Any) -> str:
    with pytest.raises(SlackApiError) as info:
        await call
    return str(info.value.response["error"])


async def test_slack_agent_sessions_as_documented(fake_slack: FakeSlack) -> None:
    """agents.sessions.* through the real SDK: only an app declared an agent (assistant:write)
    creates sessions; statuses and titles as docs.slack.dev says; not_authed without a token."""
    client = slack_client(fake_slack)
    thread = {"channel_id": "C1", "thread_ts": "1.1"}
    refused = client.agents_sessions_setStatus(status="processing", **thread)
    assert await _slack_error(refused) == "missing_scope"
    fake_slack.agent()
    answer = await client.agents_sessions_setStatus(status="processing", title="WO-1", **thread)
    assert (answer["status"], answer["title"]) == ("processing", "WO-1")
    await client.agents_sessions_setStatus(status="suspended", title="ignored", **thread)
    await client.agents_sessions_rename(title="WO-1: renamed", **thread)
    assert fake_slack.sessions[("C1", "1.1")] == {
        "status": "suspended",
        "title": "WO-1: renamed",
        "history": ["processing", "suspended"],
    }
    assert await _slack_error(client.agents_sessions_setStatus(status="done", **thread)) == (
        "invalid_arguments"
    )
    long_title = client.agents_sessions_setStatus(status="active", title="x" * 201, channel_id="C1", thread_ts="2.2")
    assert await _slack_error(long_title) == "invalid_arguments"
    unknown = client.agents_sessions_rename(title="t", channel_id="C1", thread_ts="9.9")
    assert await _slack_error(unknown) == "session_not_found"
    anonymous = AsyncWebClient(base_url=fake_slack.api_url)
    assert await _slack_error(anonymous.agents_sessions_setStatus(status="closed", **thread)) == (
        "not_authed"
    )
    fake_slack.problems.clear()  # the invalid arguments above were on purpose


async def test_slack_streams_as_documented(fake_slack: FakeSlack) -> None:
    """chat.startStream / appendStream / stopStream through the real SDK, with Slack's rules:
    a channel stream names its recipient, markdown_text stops at 12,000 characters, malformed
    chunks are invalid_chunks, a task update with a known id updates that task, and a stopped
    stream takes no more."""
    client = slack_client(fake_slack)
    root = fake_slack.add_message("C1", "please", user="U1")
    task = {"type": "task_update", "id": "t1", "title": "Reading", "status": "in_progress"}
    no_recipient = client.chat_startStream(channel="C1", thread_ts=root["ts"], chunks=[task])
    assert await _slack_error(no_recipient) == "missing_recipient_user_id"
    no_team = client.chat_startStream(
        channel="C1", thread_ts=root["ts"], recipient_user_id="U1", chunks=[task]
    )
    assert await _slack_error(no_team) == "missing_recipient_team_id"
    started = await client.chat_startStream(
        channel="C1",
        thread_ts=root["ts"],
        recipient_user_id="U1",
        recipient_team_id="T1",
        task_display_mode="plan",
        chunks=[task],
    )
    ts = started["ts"]
    assert await _slack_error(client.chat_update(channel="C1", ts=ts, text="x")) == (
        "cant_update_message"
    )
    assert await _slack_error(client.chat_appendStream(channel="C1", ts=ts)) == "no_text"
    too_long = client.chat_appendStream(channel="C1", ts=ts, markdown_text="x" * 12_001)
    assert await _slack_error(too_long) == "invalid_arguments"
    # Malformed chunks are Slack's invalid_chunks on all three methods (its method reference).
    bad_chunks = [
        [{**task, "status": "done"}],
        [{"type": "task_update", "title": "no id", "status": "complete"}],
        [{"type": "sparkle"}],
        [{"type": "markdown_text", "text": "x" * 12_001}],
    ]
    for chunks in bad_chunks:
        for method in (client.chat_startStream, client.chat_appendStream, client.chat_stopStream):
            call = method(channel="C1", thread_ts=root["ts"], ts=ts, chunks=chunks,
                          recipient_user_id="U1", recipient_team_id="T1")  # fmt: skip
            assert await _slack_error(call) == "invalid_chunks", (method, chunks)
    await client.chat_appendStream(channel="C1", ts=ts, chunks=[{**task, "status": "complete"}])
    stopped = await client.chat_stopStream(
        channel="C1",
        ts=ts,
        blocks=[{"type": "markdown", "text": "**done**"}],
        session_status="suspended",
    )
    assert stopped["message"]["tasks"] == {"t1": {"title": "Reading", "status": "complete"}}
    again = client.chat_appendStream(channel="C1", ts=ts, chunks=[task])
    assert await _slack_error(again) == "message_not_in_streaming_state"
    assert fake_slack.sessions[("C1", root["ts"])]["status"] == "suspended"
    in_a_dm = await client.chat_startStream(channel="D1", thread_ts="1.1", markdown_text="hi")
    assert in_a_dm["ts"]
    fake_slack.streaming = False  # a workspace without streaming
    assert await _slack_error(client.chat_stopStream(channel="D1", ts=in_a_dm["ts"])) == (
        "unknown_method"
    )
    fake_slack.problems.clear()  # the invalid arguments above were on purpose


async def test_slack_markdown_blocks_share_one_limit(fake_slack: FakeSlack) -> None:
    client = slack_client(fake_slack)
    half = {"type": "markdown", "text": "| a | b |\n" + "x" * 6_500}
    refused = client.chat_postMessage(channel="C1", text="t", blocks=[half, half])
    assert await _slack_error(refused) == "invalid_blocks"
    await client.chat_postMessage(channel="C1", text="t", blocks=[half])
    fake_slack.problems.clear()


async def test_slack_unknown_methods_fail_loudly(fake_slack: FakeSlack) -> None:
    assert await _slack_error(slack_client(fake_slack).api_call("agents.sessions.explode")) == (
        "unknown_method"
    )
    assert fake_slack.problems == ["agents.sessions.explode: not a method the fake implements"]
    fake_slack.problems.clear()


async def test_slack_other_methods(fake_slack: FakeSlack) -> None:
    client = slack_client(fake_slack)
    fake_slack.users["U2"] = {"tz": "Europe/Berlin"}
    fake_slack.users["UGONE"] = None
    assert (await client.users_info(user="U1"))["user"]["tz"] == "America/New_York"
    berlin = (await client.users_info(user="U2"))["user"]
    assert berlin["tz"] == "Europe/Berlin" and berlin["tz_offset"] in (3600, 7200)
    with pytest.raises(SlackApiError):
        await client.users_info(user="UGONE")

    view = {"type": "modal", "callback_id": "cfg", "title": {"type": "plain_text", "text": "T"}}
    opened = (await client.views_open(trigger_id="t.1", view=view))["view"]
    updated = await client.views_update(view_id=opened["id"], view={**view, "blocks": []})
    assert updated["view"]["id"] == opened["id"]
    await client.views_publish(user_id="U1", view={"type": "home", "blocks": []})
    assert fake_slack.home_views["U1"]["type"] == "home"

    eph = await client.chat_postEphemeral(channel="C1", user="U1", text="only you")
    assert fake_slack.ephemerals[0]["ts"] == eph["message_ts"]
    link = await client.chat_getPermalink(channel="C1", message_ts="1700000000.000100")
    assert link["permalink"].endswith("/archives/C1/p1700000000000100")
    await client.reactions_add(channel="C1", timestamp="1.2", name="eyes")
    with pytest.raises(SlackApiError):
        await client.reactions_add(channel="C1", timestamp="1.2", name="eyes")
    await client.assistant_threads_setStatus(channel_id="D1", thread_ts="1.2", status="thinking")
    assert fake_slack.statuses[("D1", "1.2")] == "thinking"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _modal(**fields: Any) -> dict[str, Any]:
    return {"type": "modal", "title": {"type": "plain_text", "text": "Delegate"}, **fields}


async def test_slack_enforces_block_kit_limits_like_slack(fake_slack: FakeSlack) -> None:
    client = slack_client(fake_slack)
    button = {"type": "button", "text": {"type": "plain_text", "text": "Go"}, "action_id": "go"}
    too_big: list[tuple[str, dict[str, Any], str]] = [
        ("msg_too_long", {"text": "x" * 40_001}, "over 40000"),
        ("invalid_blocks", {"blocks": [_section("x")] * 51}, "no more than 50 items"),
        ("invalid_blocks", {"blocks": [_section("x" * 3001)]}, "/blocks/0/text/text"),
        (
            "invalid_blocks",
            {"blocks": [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}]},
            "less than 151",
        ),
        (
            "invalid_blocks",
            {"blocks": [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11}]},
            "no more than 10 items",
        ),
        (
            "invalid_blocks",
            {"blocks": [{"type": "actions", "elements": [button] * 26}]},
            "1 to 25 items",
        ),
        (
            "invalid_blocks",
            {"blocks": [{"type": "actions", "elements": [{**button, "value": "v" * 2001}]}]},
            "/elements/0/value",
        ),
    ]
    for error, args, detail in too_big:
        with pytest.raises(SlackApiError) as info:
            await client.chat_postMessage(channel="C1", **{"text": "t", **args})
        assert info.value.response["error"] == error
        assert detail in " ".join(info.value.response["response_metadata"]["messages"])
    assert len(fake_slack.problems) == len(too_big)
    fake_slack.problems.clear()
    assert fake_slack.messages_in("C1") == []
    await client.chat_postMessage(channel="C1", text="ok", blocks=[_section("x" * 3000)] * 50)


async def test_slack_views_check_limits_metadata_and_single_use_triggers(
    fake_slack: FakeSlack,
) -> None:
    client = slack_client(fake_slack)
    bad_views = [
        _modal(title={"type": "plain_text", "text": "A title far longer than 24"}),
        _modal(submit={"type": "plain_text", "text": "Submit this right now please"}),
        _modal(private_metadata=json.dumps({"source": "x" * 3000})),
        _modal(private_metadata='{"source": "cut sh'),
        _modal(callback_id="c" * 256),
        _modal(blocks=[_section("x")] * 101),
    ]
    for n, view in enumerate(bad_views):
        with pytest.raises(SlackApiError) as info:
            await client.views_open(trigger_id=f"bad.{n}", view=view)
        assert info.value.response["error"] == "invalid_arguments"
    assert len(fake_slack.problems) == len(bad_views)
    fake_slack.problems.clear()

    await client.views_open(trigger_id="t.1", view=_modal(blocks=[_section("x")] * 100))
    with pytest.raises(SlackApiError) as reused:
        await client.views_open(trigger_id="t.1", view=_modal())
    assert reused.value.response["error"] == "expired_trigger_id"
    assert "already used" in fake_slack.problems.pop()
    # A rejected view did not use up its trigger.
    await client.views_open(trigger_id="bad.0", view=_modal())


# ---------------------------------------------------------------------- Bolt + SlackSender


@pytest_asyncio.fixture
async def bolt_url(fake_slack: FakeSlack) -> AsyncIterator[str]:
    """A tiny Bolt app served over HTTP, wired to the fake Slack."""
    app = AsyncApp(signing_secret=SIGNING_SECRET, client=slack_client(fake_slack))

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], say: Any) -> None:
        await say(text=f"on it: {event['text']}", thread_ts=event["ts"])

    @app.command("/delegate")
    async def on_command(ack: Any, command: dict[str, Any], respond: Any) -> None:
        await ack(f"queued {command['text']}")
        await respond(text="finished")

    @app.action("approve")
    async def on_approve(ack: Any, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        action = body["actions"][0]
        await client.chat_update(
            channel=body["channel"]["id"], ts=body["message"]["ts"], text=action["value"]
        )

    @app.shortcut("delegate_message")
    async def on_shortcut(ack: Any, shortcut: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        await client.views_open(
            trigger_id=shortcut["trigger_id"],
            view={
                "type": "modal",
                "callback_id": "confirm",
                "private_metadata": shortcut["message"]["text"],
                "title": {"type": "plain_text", "text": "Delegate"},
                "blocks": [],
            },
        )

    @app.view("confirm")
    async def on_submit(ack: Any, view: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        goal = view["state"]["values"]["goal"]["goal_input"]["value"]
        await client.chat_postMessage(channel="C1", text=f"{view['private_metadata']}: {goal}")

    async def handle(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await app.async_dispatch(await to_bolt_request(request)))

    web_app = web.Application()
    web_app.router.add_post("/slack/events", handle)
    runner = web.AppRunner(web_app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_signed_event_and_command_reach_bolt(fake_slack: FakeSlack, bolt_url: str) -> None:
    sender = SlackSender(bolt_url, SIGNING_SECRET)
    status, _ = await sender.event(sender.app_mention("<@UBOT> triage", channel="C9"))
    assert status == 200
    (post,) = await fake_slack.wait_for("chat.postMessage")
    assert post.args["channel"] == "C9" and post.args["text"] == "on it: <@UBOT> triage"

    status, body = await sender.command(text="hello", response_url=fake_slack.response_url("c1"))
    assert status == 200 and "queued hello" in body
    await fake_slack.wait_until(lambda: bool(fake_slack.responses))
    assert fake_slack.responses[0].key == "c1"
    assert fake_slack.responses[0].body["text"] == "finished"


async def test_signed_interactivity_reaches_bolt(fake_slack: FakeSlack, bolt_url: str) -> None:
    fake_slack.private_metadata_json = False  # this little app keeps plain text there
    sender = SlackSender(bolt_url, SIGNING_SECRET, slack=fake_slack)
    client = slack_client(fake_slack)
    card = await client.chat_postMessage(channel="C1", text="approve?")

    status, _ = await sender.action(
        sender.block_action("approve", "approved", channel_id="C1", message_ts=card["ts"])
    )
    assert status == 200
    await fake_slack.wait_for("chat.update")
    assert fake_slack.messages_in("C1")[0]["text"] == "approved"

    shortcut = sender.message_shortcut("delegate_message", "fix the build", channel_id="C1")
    assert shortcut["response_url"].startswith(fake_slack.url)
    assert (await sender.action(shortcut))[0] == 200
    (opened,) = await fake_slack.wait_for("views.open")
    assert opened.args["view"]["private_metadata"] == "fix the build"

    submission = sender.view_submission(
        "confirm", {"goal": {"goal_input": "by Friday"}}, private_metadata="fix the build"
    )
    assert (await sender.action(submission))[0] == 200
    await fake_slack.wait_for("chat.postMessage", count=2)
    assert fake_slack.messages_in("C1")[-1]["text"] == "fix the build: by Friday"


async def test_bolt_refuses_bad_signature_and_stale_timestamp(bolt_url: str) -> None:
    sender = SlackSender(bolt_url, SIGNING_SECRET)
    event = sender.app_mention("<@UBOT> hi")
    assert (await sender.event(event, bad_signature=True))[0] == 401
    assert (await sender.event(event, timestamp=int(time.time()) - 301))[0] == 401
    assert (await SlackSender(bolt_url, "wrong-secret").command(text="x"))[0] == 401
    status, body = await sender.url_verification("abc")
    assert status == 200 and "abc" in body


# ---------------------------------------------------------------------- Anthropic


def claude(fake: FakeAnthropic, **kwargs: Any) -> anthropic.AsyncAnthropic:
    kwargs.setdefault("max_retries", 0)
    return anthropic.AsyncAnthropic(
        api_key=fake.api_key, base_url=fake.base_url, _strict_response_validation=True, **kwargs
    )


USER_TURN: list[Any] = [{"role": "user", "content": "hi"}]


def claude_tools(*names: str) -> list[Any]:
    return [{"name": n, "input_schema": {"type": "object", "properties": {}}} for n in names]


async def test_anthropic_text_reply_with_usage(fake_anthropic: FakeAnthropic) -> None:
    usage = {"input_tokens": 12, "output_tokens": 3, "cache_read_input_tokens": 100}
    fake_anthropic.script(ClaudeReply(text="Hello there", usage=usage), "second")
    async with claude(fake_anthropic) as client:
        msg = await client.messages.create(model=MODEL, max_tokens=64, messages=USER_TURN)
        default = await client.messages.create(model=MODEL, max_tokens=64, messages=USER_TURN)
    assert isinstance(msg.content[0], TextBlock) and msg.content[0].text == "Hello there"
    assert msg.stop_reason == "end_turn" and msg.model == MODEL
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (12, 3)
    assert msg.usage.cache_read_input_tokens == 100
    assert default.usage.input_tokens > 0 and default.usage.cache_creation_input_tokens == 0
    assert fake_anthropic.credentials == ["sk-ant-test", "sk-ant-test"]
    assert fake_anthropic.last_request["max_tokens"] == 64


async def test_anthropic_tool_use_reply(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(ClaudeReply.tool("search", {"q": "slack"}, id="toolu_1", text="Look"))
    async with claude(fake_anthropic) as client:
        msg = await client.messages.create(
            model=MODEL, max_tokens=64, messages=USER_TURN, tools=claude_tools("search")
        )
    block = msg.content[1]
    assert isinstance(block, ToolUseBlock)
    assert (block.id, block.name, block.input) == ("toolu_1", "search", {"q": "slack"})
    assert msg.stop_reason == "tool_use"


async def test_anthropic_refusal_and_max_tokens(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(
        ClaudeReply(text="", stop_reason="refusal"),
        ClaudeReply(text="cut", stop_reason="max_tokens"),
    )
    async with claude(fake_anthropic) as client:
        refused = await client.messages.create(model=MODEL, max_tokens=8, messages=USER_TURN)
        truncated = await client.messages.create(model=MODEL, max_tokens=8, messages=USER_TURN)
    assert refused.stop_reason == "refusal" and refused.stop_details is not None
    assert truncated.stop_reason == "max_tokens"


async def test_anthropic_streaming_final_message(fake_anthropic: FakeAnthropic) -> None:
    reply = ClaudeReply(
        text="Streaming is a fine way to receive long answers.",
        tool_uses=[ToolUse("lookup", {"ids": [1, 2, 3], "deep": {"x": "y" * 40}})],
        usage={"input_tokens": 50, "output_tokens": 20},
    )
    fake_anthropic.script(reply)
    async with (
        claude(fake_anthropic) as client,
        client.messages.stream(
            model=MODEL, max_tokens=64, messages=USER_TURN, tools=claude_tools("lookup")
        ) as stream,
    ):
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(texts) == reply.text and len(texts) > 1
    assert isinstance(final.content[1], ToolUseBlock)
    assert final.content[1].input == reply.tool_uses[0].input
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (50, 20)
    assert fake_anthropic.last_request["stream"] is True


async def test_anthropic_stream_cut_off_midway(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(
        ClaudeReply(text="a long answer " * 20, cut_after=4), ClaudeReply(text="x", cut_after=0)
    )
    async with claude(fake_anthropic) as client:
        # anthropic 2.x wraps the transport error of an interrupted stream, as it does for calls.
        with pytest.raises(anthropic.APIConnectionError):
            async with client.messages.stream(
                model=MODEL, max_tokens=64, messages=USER_TURN
            ) as stream:
                await stream.get_final_message()
        with pytest.raises(anthropic.APIConnectionError):
            await client.messages.create(model=MODEL, max_tokens=8, messages=USER_TURN)


async def test_anthropic_stream_error_event(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(ClaudeReply(text="x " * 30, cut_after=3, error_event="overloaded_error"))
    async with claude(fake_anthropic) as client:
        with pytest.raises(anthropic.APIStatusError) as info:
            async with client.messages.stream(
                model=MODEL, max_tokens=64, messages=USER_TURN
            ) as stream:
                await stream.get_final_message()
    assert info.value.type == "overloaded_error"


async def test_anthropic_overloaded_and_rate_limited(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(ClaudeReply.error(529), ClaudeReply.error(429, retry_after=1))
    async with claude(fake_anthropic) as client:
        with pytest.raises(anthropic.InternalServerError) as overloaded:
            await client.messages.create(model=MODEL, max_tokens=8, messages=USER_TURN)
        with pytest.raises(anthropic.RateLimitError) as limited:
            await client.messages.create(model=MODEL, max_tokens=8, messages=USER_TURN)
    assert overloaded.value.status_code == 529
    assert overloaded.value.type == "overloaded_error"
    assert limited.value.type == "rate_limit_error"
    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": limited.value.api_message},
        "request_id": limited.value.body["request_id"],  # type: ignore[index]
    }


async def test_anthropic_sdk_retry_recovers_from_500(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(ClaudeReply.error(500, retry_after=0.01), "recovered")
    async with claude(fake_anthropic, max_retries=1) as client:
        msg = await client.messages.create(model=MODEL, max_tokens=8, messages=USER_TURN)
    assert isinstance(msg.content[0], TextBlock) and msg.content[0].text == "recovered"
    assert [h["x-stainless-retry-count"] for h in fake_anthropic.headers] == ["0", "1"]


async def test_anthropic_auth_and_validation_errors(fake_anthropic: FakeAnthropic) -> None:
    async with anthropic.AsyncAnthropic(
        api_key="wrong", base_url=fake_anthropic.base_url, max_retries=0
    ) as client:
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.create(model=MODEL, max_tokens=8, messages=USER_TURN)
    fake_anthropic.script(ClaudeReply.error(400, "messages: roles must alternate"))
    async with claude(fake_anthropic) as client:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(model=MODEL, max_tokens=8, messages=USER_TURN)
        count = await client.messages.count_tokens(model=MODEL, messages=USER_TURN)
    assert info.value.api_message == "messages: roles must alternate"
    assert count.input_tokens > 0


def _use(id: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": id, "name": "search", "input": {}}


def _result(id: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": id, "content": "found"}


@pytest.mark.parametrize(
    ("messages", "tools", "error"),
    [
        ([], ["search"], "at least one message"),
        ([{"role": "system", "content": "x"}], [], "Input should be 'user' or 'assistant'"),
        ([{"role": "user", "content": ""}], [], "non-empty content"),
        ([{"role": "user", "content": [{"type": "text", "text": ""}]}], [], "must be non-empty"),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [_use("t1")]}],
            ["search"],
            "ids were found without `tool_result` blocks immediately after: t1",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [_use("t1"), _use("t2")]},
                {"role": "user", "content": [_result("t1")]},
            ],
            ["search"],
            "immediately after: t2",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [_use("t1")]},
                {"role": "user", "content": "and then"},
                {"role": "user", "content": [_result("t1")]},
            ],
            ["search"],
            "immediately after: t1",
        ),
        (
            [{"role": "user", "content": [_result("t9")]}],
            ["search"],
            "unexpected `tool_use_id` found in `tool_result` blocks: t9",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [_use("t1")]},
                {"role": "user", "content": [{"type": "text", "text": "x"}, _result("t1")]},
            ],
            ["search"],
            "must come first",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [_use("t1")]},
                {"role": "user", "content": [_result("t1")]},
            ],
            [],
            "must define tools",
        ),
    ],
)
async def test_anthropic_rejects_what_the_real_api_rejects(
    fake_anthropic: FakeAnthropic, messages: list[Any], tools: list[str], error: str
) -> None:
    fake_anthropic.script("never sent")
    async with claude(fake_anthropic) as client:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(
                model=MODEL,
                max_tokens=8,
                messages=messages,
                **({"tools": claude_tools(*tools)} if tools else {}),
            )
    assert error in str(info.value.api_message)
    assert fake_anthropic.pending == 1
    assert fake_anthropic.problems and error in fake_anthropic.problems[0]
    fake_anthropic.problems.clear()


async def test_anthropic_accepts_a_well_formed_tool_conversation(
    fake_anthropic: FakeAnthropic,
) -> None:
    # Consecutive same-role turns are merged by the real API, not rejected.
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "user", "content": "and more"},
        {"role": "assistant", "content": [{"type": "text", "text": "Looking"}, _use("t1")]},
        {"role": "user", "content": [_result("t1"), {"type": "text", "text": "also"}]},
    ]
    fake_anthropic.script("done")
    async with claude(fake_anthropic) as client:
        msg = await client.messages.create(
            model=MODEL, max_tokens=8, messages=messages, tools=claude_tools("search")
        )
    assert isinstance(msg.content[0], TextBlock) and msg.content[0].text == "done"


async def test_model_fakes_fail_loudly_on_unscripted_calls(
    fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI
) -> None:
    async with claude(fake_anthropic) as client:
        with pytest.raises(anthropic.BadRequestError, match="no scripted reply"):
            await client.messages.create(model=MODEL, max_tokens=8, messages=USER_TURN)
    async with gpt(fake_openai) as client:
        with pytest.raises(openai.BadRequestError, match="no scripted reply"):
            await client.chat.completions.create(model=GPT, messages=CHAT)
    for fake in (fake_anthropic, fake_openai):
        with pytest.raises(AssertionError, match="no scripted reply"):
            fake.check()
        fake.problems.clear()


async def test_model_fakes_flag_scripted_calls_of_undeclared_tools(
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_anthropic.script(ClaudeReply.tool("delete_everything"))
    async with claude(fake_anthropic) as client:
        await client.messages.create(
            model=MODEL, max_tokens=8, messages=USER_TURN, tools=claude_tools("search")
        )
    assert "'delete_everything', which the request did not declare" in fake_anthropic.problems[0]
    fake_anthropic.problems.clear()


# ---------------------------------------------------------------------- OpenAI


def gpt(fake: FakeOpenAI, **kwargs: Any) -> openai.AsyncOpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(
        api_key=fake.api_key, base_url=fake.base_url, _strict_response_validation=True, **kwargs
    )


CHAT: list[Any] = [{"role": "user", "content": "hi"}]
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "search", "parameters": {"type": "object", "properties": {}}},
    }
]


async def test_openai_chat_completion_with_tool_call(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(
        GPTReply.tool("search", {"q": "slack"}, id="call_1", usage={"cached_tokens": 4}),
        "plain",
    )
    async with gpt(fake_openai) as client:
        done = await client.chat.completions.create(model=GPT, messages=CHAT, tools=TOOLS)
        plain = await client.chat.completions.create(model=GPT, messages=CHAT)
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.id == "call_1" and call.function.name == "search"  # type: ignore[union-attr]
    assert call.function.arguments == '{"q": "slack"}'  # type: ignore[union-attr]
    assert done.usage is not None and done.usage.prompt_tokens_details is not None
    assert done.usage.prompt_tokens_details.cached_tokens == 4
    assert plain.choices[0].message.content == "plain"
    assert fake_openai.headers[0]["Authorization"] == "Bearer sk-test"


async def test_openai_responses_text_and_function_call(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(
        GPTReply(text="Hello", usage={"input_tokens": 9, "reasoning_tokens": 2}),
        GPTReply(tool_calls=[ToolCall("search", {"q": 1}, id="call_9")]),
    )
    async with gpt(fake_openai) as client:
        text = await client.responses.create(model=GPT, input="hi")
        call = await client.responses.create(
            model=GPT,
            input="hi",
            tools=[{"type": "function", "name": "search", "parameters": {}, "strict": False}],
        )
    assert text.output_text == "Hello"
    assert text.usage is not None and text.usage.input_tokens == 9
    assert text.usage.output_tokens_details.reasoning_tokens == 2
    item = call.output[0]
    assert item.type == "function_call" and item.call_id == "call_9"
    assert item.arguments == '{"q": 1}'
    assert fake_openai.paths == ["/v1/responses", "/v1/responses"]


async def test_openai_refusals(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(GPTReply(refusal="I can't help with that."), GPTReply(refusal="No."))
    async with gpt(fake_openai) as client:
        chat = await client.chat.completions.create(model=GPT, messages=CHAT)
        resp = await client.responses.create(model=GPT, input="hi")
    assert chat.choices[0].message.refusal == "I can't help with that."
    assert chat.choices[0].message.content is None
    message = resp.output[0]
    assert isinstance(message, ResponseOutputMessage)
    part = message.content[0]
    assert isinstance(part, ResponseOutputRefusal) and part.refusal == "No."


async def test_openai_streaming_chat_with_usage(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(
        GPTReply(text="one two three four five six seven", usage={"output_tokens": 7}),
        GPTReply.tool("search", {"q": "x" * 40}),
    )
    async with gpt(fake_openai) as client:
        stream = await client.chat.completions.create(
            model=GPT, messages=CHAT, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        async with client.chat.completions.stream(model=GPT, messages=CHAT, tools=TOOLS) as helper:
            final = await helper.get_final_completion()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four five six seven"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    call = final.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "search"
    assert call.function.arguments == '{"q": "' + "x" * 40 + '"}'


async def test_openai_streaming_responses(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(
        GPTReply(text="streamed answer here", tool_calls=[ToolCall("search", {"q": "y"})])
    )
    tools: list[Any] = [{"type": "function", "name": "search", "parameters": {}, "strict": False}]
    async with (
        gpt(fake_openai) as client,
        client.responses.stream(model=GPT, input="hi", tools=tools) as stream,
    ):
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == "streamed answer here"
    assert final.output_text == "streamed answer here"
    assert final.output[1].type == "function_call"
    assert final.usage is not None and final.usage.total_tokens > 0


async def test_openai_stream_cut_off_midway(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(GPTReply(text="word " * 40, cut_after=3), GPTReply(text="x", cut_after=2))
    async with gpt(fake_openai) as client:
        stream = await client.chat.completions.create(model=GPT, messages=CHAT, stream=True)
        with pytest.raises(openai.APIConnectionError):
            async for _ in stream:
                pass
        with pytest.raises(openai.APIConnectionError):
            async with client.responses.stream(model=GPT, input="hi") as events:
                await events.get_final_response()


async def test_openai_errors(fake_openai: FakeOpenAI) -> None:
    fake_openai.script(
        GPTReply.insufficient_quota(), GPTReply.error(500, retry_after=0.01), "after"
    )
    async with gpt(fake_openai) as client:
        with pytest.raises(openai.RateLimitError) as quota:
            await client.chat.completions.create(model=GPT, messages=CHAT)
    assert quota.value.code == "insufficient_quota"
    async with gpt(fake_openai, max_retries=1) as client:
        ok = await client.chat.completions.create(model=GPT, messages=CHAT)
    assert ok.choices[0].message.content == "after"

    fake_openai.script(GPTReply.error(429, retry_after=2))
    async with gpt(fake_openai) as client:
        with pytest.raises(openai.RateLimitError) as limited:
            await client.responses.create(model=GPT, input="x")
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == "2"

    async with openai.AsyncOpenAI(
        api_key="sk-wrong", base_url=fake_openai.base_url, max_retries=0
    ) as client:
        with pytest.raises(openai.AuthenticationError) as denied:
            await client.chat.completions.create(model=GPT, messages=CHAT)
    assert denied.value.code == "invalid_api_key"


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([], "too short"),
        (
            [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "search", "arguments": "{}"},
                        },
                        {
                            "id": "c2",
                            "type": "function",
                            "function": {"name": "search", "arguments": "{}"},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
                {"role": "user", "content": "next"},
            ],
            "did not have response messages: c2",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "tool", "tool_call_id": "c9", "content": "x"},
            ],
            "must be a response to a preceeding message with 'tool_calls'",
        ),
    ],
)
async def test_openai_rejects_what_the_real_api_rejects(
    fake_openai: FakeOpenAI, messages: list[Any], error: str
) -> None:
    fake_openai.script("never sent")
    async with gpt(fake_openai) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model=GPT, messages=messages, tools=TOOLS)
    assert error in info.value.message
    assert fake_openai.pending == 1 and error in fake_openai.problems[0]
    fake_openai.problems.clear()
