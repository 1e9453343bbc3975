"""Fuzzing Socket Mode frames with hypothesis (Proof issue): text that is not JSON, binary
frames, JSON of any shape, and envelopes whose type, id, payload and event have odd, missing or
wrongly typed fields.

After every frame the connection still carries a normal envelope (ignored channel chatter, which
is acknowledged); nothing Delegate runs logs an error or a traceback; and after all of them a
normal DM is still answered on the same connection.
"""

from __future__ import annotations

import itertools
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bot.app import create_app
from bot.slack_client import make_slack_client
from bot.socket import SocketModeRunner
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.slack import FakeSlack
from tests.fakes.socket_mode import APP_TOKEN, FakeSocketMode
from tests.support.bot import delivering
from tests.support.fuzz import FUZZ, any_text, ids, junk, mutate, slack_ts, tracebacks
from tests.support.intake import chat
from tests.support.waiting import bot_idle
from workers.providers import ModelRouter
from workers.store import Store

pytestmark = [
    pytest.mark.parametrize("database", ["sqlite"], indirect=True),
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]


@pytest.fixture
async def socket_mode(fake_slack: FakeSlack) -> AsyncIterator[FakeSocketMode]:
    async with FakeSocketMode(fake_slack) as server:
        yield server


@pytest.fixture
async def runner(
    store: Store,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
    socket_mode: FakeSocketMode,
    settings_factory: Callable[..., Any],
) -> AsyncIterator[SocketModeRunner]:
    fake_anthropic.script(*[chat("It means earnings before interest.")] * 2000)
    settings = settings_factory(
        slack_app_token=APP_TOKEN,
        slack_signing_secret=None,
        slack_api_url=fake_slack.api_url,
        slack={"socket_ping_interval_s": 30, "socket_watchdog_s": 60},
    )
    client = make_slack_client(settings, backoff_factor_s=0.01)
    router = ModelRouter.from_settings(settings, store)
    app = create_app(settings, store=store, client=client, completer=router)
    running = SocketModeRunner(app, app_token=APP_TOKEN, settings=settings.slack)
    await running.start()
    await socket_mode.wait_until(lambda: socket_mode.connections >= 1)
    try:
        async with delivering(store, settings):
            yield running
    finally:
        await running.close()
        await router.close()


ENVELOPE_TYPES = ["events_api", "interactive", "slash_commands", "hello", "junk", "events_api"]


@st.composite
def event_payloads(draw: st.DrawFn) -> Any:
    ts = draw(slack_ts)
    event = {
        "type": draw(st.sampled_from(["message", "app_mention", "app_home_opened", "reaction"])),
        "user": draw(ids),
        "text": draw(any_text),
        "ts": ts,
        "channel": draw(ids),
        "channel_type": draw(st.sampled_from(["channel", "im", "group"])),
    }
    payload = {
        "type": "event_callback",
        "team_id": "T1",
        "api_app_id": "A1",
        "event": draw(mutate(event)),
        "event_id": f"Ev{uuid.uuid4().hex[:10]}",
        "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": True}],
    }
    return draw(st.one_of(mutate(payload), junk))


@st.composite
def envelopes(draw: st.DrawFn) -> str:
    envelope = {
        "envelope_id": str(uuid.uuid4()),
        "type": draw(st.sampled_from(ENVELOPE_TYPES)),
        "payload": draw(event_payloads()),
        "accepts_response_payload": False,
        "retry_attempt": 0,
        "retry_reason": "",
    }
    return json.dumps(draw(mutate(envelope)))


frames = st.one_of(
    envelopes(),
    envelopes(),
    junk.map(json.dumps),
    st.text(max_size=200),
    st.just("{not json"),
    st.binary(max_size=200),
)


async def _still_carries(socket_mode: FakeSocketMode, n: int) -> None:
    """A normal envelope (chatter Delegate ignores) is acknowledged on the live connection."""
    event = {
        "type": "message",
        "user": "U2",
        "text": "lunch?",
        "ts": f"1700000000.{n:06d}",
        "channel": "C9",
        "channel_type": "channel",
    }
    envelope = await socket_mode.send_event(event, event_id=f"EvOK{n}")
    await socket_mode.wait_until(lambda: socket_mode.acked(envelope))


_seq = itertools.count(1)


# Found by the fuzzer: an events_api frame whose event is null made Bolt's error handler raise.
NULL_EVENT = json.dumps(
    {
        "envelope_id": "920ee63d-2be8-43b2-8d11-5532f17e9d88",
        "type": "events_api",
        "payload": {
            "type": "event_callback",
            "team_id": "T1",
            "api_app_id": "A1",
            "event": None,
            "event_id": "Ev2e4c5f290b",
            "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": True}],
        },
        "accepts_response_payload": False,
        "retry_attempt": 0,
        "retry_reason": "",
    }
)


@FUZZ
@given(frame=frames)
@example(frame=NULL_EVENT)
@example(frame=NULL_EVENT.replace('"events_api"', '"slash_commands"'))
async def test_garbage_frames_do_not_break_the_connection(
    runner: SocketModeRunner,
    socket_mode: FakeSocketMode,
    fake_slack: FakeSlack,
    caplog: pytest.LogCaptureFixture,
    frame: str | bytes,
) -> None:
    caplog.clear()
    caplog.set_level(logging.INFO)
    n = next(_seq)
    await socket_mode.send_raw(frame)
    await _still_carries(socket_mode, n)
    before = len(fake_slack.calls_to("chat.postMessage"))
    dm = {
        "type": "message",
        "user": "U1",
        "text": "what does EBITDA mean?",
        "ts": f"1700000099.{n:06d}",
        "channel": "D1",
        "channel_type": "im",
    }
    await socket_mode.send_event(dm, event_id=f"EvDM{n}")
    await fake_slack.wait_until(lambda: len(fake_slack.calls_to("chat.postMessage")) > before)
    await bot_idle()
    assert socket_mode.connections == 1, "the connection was dropped"
    bad = tracebacks(caplog.records)
    assert not bad, bad
