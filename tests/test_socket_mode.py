"""Socket Mode end to end: envelopes over a real WebSocket, acks before work, retries deduped,
and a watchdog that recreates a connection gone quiet."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bot.app import create_app
from bot.slack_client import make_slack_client
from bot.socket import SocketModeRunner
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.slack import FakeSlack
from tests.fakes.socket_mode import APP_TOKEN, FakeSocketMode
from tests.support.intake import questions
from tests.support.waiting import bot_idle
from workers.providers import ModelRouter
from workers.store import Store


@pytest.fixture
async def socket_mode(fake_slack: FakeSlack) -> AsyncIterator[FakeSocketMode]:
    async with FakeSocketMode(fake_slack) as server:
        yield server


@pytest.fixture
async def runner(
    store: Store,
    fake_slack: FakeSlack,
    socket_mode: FakeSocketMode,
    settings_factory: Callable[..., Any],
) -> AsyncIterator[SocketModeRunner]:
    settings = settings_factory(
        slack_app_token=APP_TOKEN,
        slack_signing_secret=None,
        slack_api_url=fake_slack.api_url,
        # Slow pings keep slack_sdk's own stale-connection check out of the way of the watchdog's.
        slack={"socket_ping_interval_s": 30, "socket_watchdog_s": 1.0},
    )
    client = make_slack_client(settings, backoff_factor_s=0.01)
    router = ModelRouter.from_settings(settings, store)
    app = create_app(settings, store=store, client=client, completer=router)
    running = SocketModeRunner(app, app_token=APP_TOKEN, settings=settings.slack)
    await running.start()
    await socket_mode.wait_until(lambda: socket_mode.connections >= 1)
    try:
        yield running
    finally:
        await running.close()
        await router.close()


def _mention(ts: str) -> dict[str, Any]:
    return {
        "type": "app_mention",
        "user": "U1",
        "text": "<@UBOT> competitor pricing",
        "ts": ts,
        "channel": "C1",
        "event_ts": ts,
        "channel_type": "channel",
    }


async def test_event_is_acked_before_the_model_answers_and_retries_are_dropped(
    runner: SocketModeRunner,
    socket_mode: FakeSocketMode,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
) -> None:
    slow = questions("Which competitors?")
    slow.delay = 2.0
    fake_anthropic.script(slow, questions("Again?"))
    first = await socket_mode.send_event(_mention("1700000001.000100"), event_id="EvSOCK")
    await socket_mode.wait_until(lambda: socket_mode.acked(first), within=2)
    assert fake_slack.calls_to("chat.postMessage") == [], "acked only after the slow work"
    retry = await socket_mode.send_event(
        _mention("1700000001.000100"), event_id="EvSOCK", retry_attempt=1, retry_reason="timeout"
    )
    await socket_mode.wait_until(lambda: socket_mode.acked(retry), within=2)
    await fake_slack.wait_for("chat.postMessage", within=10)
    await bot_idle()
    assert len(fake_slack.calls_to("chat.postMessage")) == 1
    assert len(fake_anthropic.requests) == 1


async def test_watchdog_recreates_a_silent_connection(
    runner: SocketModeRunner, socket_mode: FakeSocketMode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.socket")
    socket_mode.answer_pings = False
    await socket_mode.wait_until(lambda: socket_mode.connections >= 2, within=10)
    assert runner.reconnects >= 1
    assert any("recreating the connection" in r.getMessage() for r in caplog.records)
    assert len(socket_mode.slack.calls_to("apps.connections.open")) >= 2
