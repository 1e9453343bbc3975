"""Fuzzing the HTTP surface with hypothesis (Proof issue): signed Events API envelopes,
interactivity payloads, view submissions and slash commands shaped like Slack's but with odd,
missing, extra or wrongly typed fields, odd Unicode and oversized text.

Every request answers below 500, nothing logs an error or a traceback, a slash command always
gets its response_url reply, and the bot still answers a plain request afterwards. The bot is
started once per test on SQLite; each hypothesis example is one request against it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote_plus, urlencode

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.ids import (
    APPROVE_ACTION,
    CANCEL_ACTION,
    CHANGES_ACTION,
    CHANGES_CALLBACK,
    EDIT_ACTION,
    EDIT_CALLBACK,
    EXCEPTION_CANCEL_ACTION,
    EXTEND_ACTION,
    EXTEND_CALLBACK,
    EXTEND_CUSTOM_ACTION,
    INTAKE_CALLBACK,
    NEW_ORDER_ACTION,
    REJECT_ACTION,
    RETRY_ACTION,
    SHORTCUT_DELEGATE_THIS,
    START_ACTION,
)
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.slack import FakeSlack
from tests.support.bot import RunningBot, running_bot
from tests.support.fuzz import FUZZ, any_text, ids, junk, mutate, odd_text, slack_ts, tracebacks
from tests.support.intake import chat, draft
from tests.support.waiting import bot_idle
from workers.store import Store

# The bot and its database matter here, not the backend: SQLite only.
pytestmark = [
    pytest.mark.parametrize("database", ["sqlite"], indirect=True),
    # Oversized examples are the point here; hypothesis warns when it prints one.
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

FORM = "application/x-www-form-urlencoded"


def _last_text(body: dict[str, Any]) -> str:
    messages = body.get("messages") or [{}]
    content = messages[-1].get("content")
    if isinstance(content, list):
        return " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return str(content or "")


SEED_REQUEST = "competitor pricing table"


def echo_chat(body: dict[str, Any]) -> Any:
    """The intake model answers with a chat reply quoting (the end of) what it was given; the
    seed request gets a draft."""
    if SEED_REQUEST in _last_text(body):
        return draft(reviewers=["U7"])
    return chat("You asked: " + _last_text(body)[-500:])


@pytest.fixture
async def bot(
    store: Store,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
    settings_factory: Callable[..., Any],
) -> AsyncIterator[RunningBot]:
    fake_anthropic.script(*[echo_chat] * 5000)
    async with running_bot(settings_factory(), store=store, fake_slack=fake_slack) as running:
        running.sender.slack = fake_slack
        yield running


async def _still_answers(bot: RunningBot, fake_slack: FakeSlack) -> None:
    """A plain DM after the garbage still gets the bot's answer."""
    before = len(fake_slack.calls_to("chat.postMessage"))
    status, _ = await bot.sender.event(bot.sender.direct_message("what does EBITDA mean?"))
    assert status == 200
    await fake_slack.wait_until(lambda: len(fake_slack.calls_to("chat.postMessage")) > before)


def _check_logs(caplog: pytest.LogCaptureFixture) -> None:
    bad = tracebacks(caplog.records)
    assert not bad, bad


# ---------------------------------------------------------------- Events API


EVENT_TYPES = ["message", "app_mention", "app_home_opened", "message", "app_mention"]
SUBTYPES = [
    None,
    None,
    "message_changed",
    "message_deleted",
    "bot_message",
    "file_share",
    "thread_broadcast",
    "channel_join",
    "me_message",
    "message_replied",
]


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    ts = draw(slack_ts)
    event: dict[str, Any] = {
        "type": draw(st.sampled_from(EVENT_TYPES)),
        "user": draw(ids),
        "text": draw(any_text),
        "ts": ts,
        "event_ts": ts,
        "channel": draw(ids),
        "channel_type": draw(st.sampled_from(["channel", "im", "group", "mpim", "app_home"])),
        "team": "T1",
    }
    if subtype := draw(st.sampled_from(SUBTYPES)):
        event["subtype"] = subtype
    if draw(st.booleans()):
        event["thread_ts"] = draw(slack_ts)
    if event["type"] == "app_home_opened":
        event["tab"] = draw(st.sampled_from(["home", "messages", "about", ""]))
    if subtype == "message_changed":
        event["message"] = draw(mutate({"type": "message", "user": "U1", "text": "edited"}))
        event["previous_message"] = draw(junk)
    if subtype == "message_deleted":
        event["deleted_ts"] = draw(slack_ts)
    if draw(st.booleans()):
        event["blocks"] = draw(junk)
    if draw(st.booleans()):
        event["files"] = draw(junk)
    return draw(mutate(event)) if draw(st.booleans()) else event


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "token": "verification-token",
        "team_id": "T1",
        "api_app_id": "A1",
        "event": draw(events()),
        "type": "event_callback",
        "event_id": draw(st.one_of(st.uuids().map(lambda u: f"Ev{u.hex}"), junk)),
        "event_time": int(time.time()),
        "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": True}],
    }
    return draw(mutate(envelope)) if draw(st.integers(0, 3)) == 0 else envelope


@FUZZ
@given(envelope=envelopes())
async def test_fuzzed_events_never_fail(
    bot: RunningBot,
    fake_slack: FakeSlack,
    caplog: pytest.LogCaptureFixture,
    envelope: dict[str, Any],
) -> None:
    caplog.clear()
    caplog.set_level(logging.INFO)
    status, _ = await bot.sender.post_json(envelope)
    assert status < 500
    await bot_idle()
    _check_logs(caplog)
    await _still_answers(bot, fake_slack)
    await bot_idle()
    _check_logs(caplog)


# ---------------------------------------------------------------- interactivity

ACTION_IDS = [
    START_ACTION,
    EDIT_ACTION,
    CANCEL_ACTION,
    NEW_ORDER_ACTION,
    APPROVE_ACTION,
    CHANGES_ACTION,
    REJECT_ACTION,
    EXTEND_ACTION,
    EXTEND_CUSTOM_ACTION,
    RETRY_ACTION,
    EXCEPTION_CANCEL_ACTION,
]
CALLBACKS = [INTAKE_CALLBACK, EDIT_CALLBACK, CHANGES_CALLBACK, EXTEND_CALLBACK]
BLOCK_IDS = [
    "request",
    "title",
    "goal",
    "deliverable",
    "criteria",
    "feedback",
    "usd",
    "minutes",
    "budget_usd",
    "deadline_date",
    "deadline_time",
    "policy",
    "workload_class",
    "reviewers",
]

order_refs = st.one_of(st.sampled_from(["WO-1", "WO-2", "WO-0", "wo-1", "WO-99999999999"]), junk)

state_leaf = st.one_of(
    st.builds(lambda v: {"type": "plain_text_input", "value": v}, st.one_of(any_text, junk)),
    st.builds(lambda v: {"type": "number_input", "value": v}, st.one_of(odd_text, junk)),
    st.builds(lambda v: {"type": "datepicker", "selected_date": v}, st.one_of(odd_text, junk)),
    st.builds(lambda v: {"type": "timepicker", "selected_time": v}, st.one_of(odd_text, junk)),
    st.builds(
        lambda v: {"type": "static_select", "selected_option": v},
        st.one_of(junk, st.builds(lambda s: {"value": s}, odd_text)),
    ),
    st.builds(lambda v: {"type": "multi_users_select", "selected_users": v}, junk),
    junk,
)
state_values = st.one_of(
    st.dictionaries(
        st.one_of(st.sampled_from(BLOCK_IDS), odd_text),
        st.one_of(
            st.dictionaries(
                st.one_of(st.sampled_from(BLOCK_IDS), odd_text), state_leaf, max_size=3
            ),
            junk,
        ),
        max_size=6,
    ),
    junk,
)
metadata = st.one_of(
    st.builds(
        lambda d: json.dumps(d),
        st.fixed_dictionaries(
            {},
            optional={
                "order_id": order_refs,
                "channel": st.one_of(ids, junk),
                "ts": st.one_of(slack_ts, junk),
                "tz": st.one_of(st.sampled_from(["UTC", "Europe/Berlin", "Mars/Base"]), junk),
                "message": junk,
                "source": st.one_of(any_text, junk),
                "permalink": st.one_of(odd_text, junk),
                "author": st.one_of(ids, junk),
            },
        ),
    ),
    st.builds(json.dumps, junk),
    odd_text,
)


@st.composite
def block_actions(draw: st.DrawFn, sender: Any) -> dict[str, Any]:
    payload: dict[str, Any] = sender.block_action(
        draw(st.one_of(st.sampled_from(ACTION_IDS), odd_text)),
        user_id=draw(st.sampled_from(["U1", "U2", "U7"])),
        channel_id=draw(st.sampled_from(["C1", "D1"])),
    )
    action = payload["actions"][0]
    action["value"] = draw(st.one_of(order_refs, any_text))
    if draw(st.booleans()):
        payload["actions"] = [draw(mutate(action)) for _ in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        payload["message"] = draw(mutate(payload["message"]))
    if draw(st.booleans()):
        payload["state"] = {"values": draw(state_values)}
    return draw(mutate(payload)) if draw(st.integers(0, 3)) == 0 else payload


@st.composite
def view_submissions(draw: st.DrawFn, sender: Any) -> dict[str, Any]:
    payload: dict[str, Any] = sender.view_submission(
        draw(st.one_of(st.sampled_from(CALLBACKS), odd_text)),
        user_id=draw(st.sampled_from(["U1", "U2", "U7"])),
        private_metadata=draw(metadata),
    )
    payload["view"]["state"] = {"values": draw(state_values)}
    if draw(st.integers(0, 3)) == 0:
        payload["view"] = draw(mutate(payload["view"]))
    return payload


@st.composite
def shortcuts(draw: st.DrawFn, sender: Any) -> dict[str, Any]:
    payload: dict[str, Any] = sender.message_shortcut(
        draw(st.one_of(st.just(SHORTCUT_DELEGATE_THIS), odd_text)),
        draw(any_text),
        message_user=draw(ids),
    )
    if draw(st.booleans()):
        payload["message"] = draw(mutate(payload["message"]))
    if draw(st.booleans()):
        payload["type"] = draw(st.sampled_from(["shortcut", "message_action", "view_closed"]))
    return draw(mutate(payload)) if draw(st.integers(0, 3)) == 0 else payload


@FUZZ
@given(data=st.data())
async def test_fuzzed_interactions_never_fail(
    bot: RunningBot,
    fake_slack: FakeSlack,
    caplog: pytest.LogCaptureFixture,
    data: st.DataObject,
) -> None:
    caplog.clear()
    caplog.set_level(logging.INFO)
    if not await bot.store.orders.list_orders():
        await _seed_order(bot, fake_slack)
    payload = data.draw(
        st.one_of(block_actions(bot.sender), view_submissions(bot.sender), shortcuts(bot.sender))
    )
    status, text = await bot.sender.action(payload)
    assert status < 500, text
    if status == 200 and text:
        answer = json.loads(text)
        if answer.get("response_action") == "errors":
            assert answer["errors"] and all(
                isinstance(v, str) and v for v in answer["errors"].values()
            ), answer
    await bot_idle()
    _check_logs(caplog)


async def _seed_order(bot: RunningBot, fake_slack: FakeSlack) -> None:
    """WO-1 exists (awaiting confirmation), so fuzzed clicks on it reach the real handlers."""
    status, _ = await bot.sender.event(
        bot.sender.app_mention(f"<@UBOT> {SEED_REQUEST}, <@U7> reviews", channel="C1")
    )
    assert status == 200
    await bot_idle()
    assert await bot.store.orders.list_orders()


# ---------------------------------------------------------------- slash commands

command_text = st.one_of(
    any_text,
    st.builds(
        lambda verb, rest: f"{verb} {rest}",
        st.sampled_from(["help", "list", "status", "cancel", "STATUS", "Cancel", "go"]),
        st.one_of(order_refs.map(str), any_text),
    ),
    st.sampled_from(["x" * 4001, "é" * 5000, "status " + "9" * 5000, "cancel WO-" + "1" * 400]),
)


MAX_BODY_BYTES = 1024 * 1024  # bot.server's client_max_size


@FUZZ
@given(text=command_text)
async def test_fuzzed_slash_commands_get_an_answer(
    bot: RunningBot, fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    caplog.clear()
    caplog.set_level(logging.INFO)
    key = f"cmd{len(fake_slack.responses)}x{time.monotonic_ns()}"
    before = len(fake_slack.calls_to("chat.postMessage"))
    status, _ = await bot.sender.command(text=text, response_url=fake_slack.response_url(key))
    if len(quote_plus(text)) > MAX_BODY_BYTES:  # far beyond what Slack sends: refused, not a 5xx
        assert status == 413
        return
    assert status == 200
    await bot_idle()
    replied = [r for r in fake_slack.responses if r.key == key]
    started = len(fake_slack.calls_to("chat.postMessage")) > before
    # Either an ephemeral answer, or a new request whose dialogue opened in the channel.
    assert replied or started, text[:200]
    for reply in replied:
        assert str(reply.body.get("text") or "").strip()
    _check_logs(caplog)


@pytest.mark.parametrize(
    "files",
    [7, "F1", {"id": "F1"}, [{"id": "F1", "name": "a.csv", "size": "big"}], [None, 3]],
)
async def test_a_mention_with_malformed_files_is_answered(
    bot: RunningBot, fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture, files: Any
) -> None:
    """Slack's `files` is a list of file objects; anything else (found by the fuzzer: a
    number) is no attachment, never a crashed listener."""
    caplog.set_level(logging.INFO)
    event = bot.sender.app_mention("<@UBOT> what is our refund policy?", channel="C1")
    event["files"] = files
    assert (await bot.sender.event(event))[0] == 200
    await fake_slack.wait_until(lambda: bool(fake_slack.calls_to("chat.postMessage")))
    await bot_idle()
    _check_logs(caplog)


# ---------------------------------------------------------------- oversized bodies


@pytest.mark.parametrize(
    ("content_type", "make"),
    [
        ("application/json", lambda n: json.dumps({"type": "event_callback", "x": "a" * n})),
        (FORM, lambda n: urlencode({"command": "/delegate", "user_id": "U1", "text": "a" * n})),
        (
            FORM,
            lambda n: urlencode({"payload": json.dumps({"type": "block_actions", "x": "é" * n})}),
        ),
        ("text/plain", lambda n: "a" * n),
    ],
)
@pytest.mark.parametrize("size", [1024 * 1024])
async def test_a_one_megabyte_body_is_refused_with_a_4xx(
    bot: RunningBot,
    caplog: pytest.LogCaptureFixture,
    content_type: str,
    make: Callable[[int], str],
    size: int,
) -> None:
    caplog.set_level(logging.INFO)
    status, _ = await bot.sender.post(make(size), content_type)
    assert status in (400, 413)
    # Unsigned, and without even a content length check upstream.
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{bot.url}/slack/events", data=b"a" * size) as resp,
    ):
        assert resp.status in (400, 401, 413)
    _check_logs(caplog)
