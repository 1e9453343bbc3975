"""Socket Mode end to end: envelopes over a real WebSocket, acks before work, retries deduped,
and a watchdog that recreates a connection gone quiet."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.app import create_app
from bot.slack_client import make_slack_client
from bot.socket import SocketModeRunner
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack, SlackError
from tests.fakes.socket_mode import APP_TOKEN, FakeSocketMode
from tests.support.bot import delivering
from tests.support.cli import DELEGATE, cli_env, free_port, health, provider_env, stop_delegate
from tests.support.intake import questions
from tests.support.waiting import bot_idle, eventually
from workers.providers import ModelRouter
from workers.store import Store

pytestmark = pytest.mark.front_door  # SQLite only: tests/support/databases.py


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
        async with delivering(store, settings):
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


@pytest.fixture
def providers(fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI) -> dict[str, str]:
    return provider_env(fake_anthropic, fake_openai)


async def _run_socket_mode(
    tmp_path: Path, fake_slack: FakeSlack, port: int, providers: dict[str, str], **env: str
) -> Any:
    return await asyncio.create_subprocess_exec(
        str(DELEGATE),
        "run",
        "--host",
        "127.0.0.1",
        env=cli_env(
            **{
                **providers,
                "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'd.db'}",
                "PORT": str(port),
                "SLACK_BOT_TOKEN": fake_slack.token,
                "SLACK_APP_TOKEN": APP_TOKEN,
                "SLACK_API_URL": fake_slack.api_url,
                **env,
            }
        ),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_healthz_reports_the_socket_mode_connection_and_the_worker_loop(
    fake_slack: FakeSlack, socket_mode: FakeSocketMode, providers: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    proc = await _run_socket_mode(tmp_path, fake_slack, port, providers)
    try:
        _, body = await _health_when(
            proc, port, lambda status, body: status == 200 and body["worker_loop"] == "ok"
        )
        assert body["socket_mode"] == "connected", body
        assert body["slack_token"] == "ok" and body["models"] == "ok", body
        assert socket_mode.connections >= 1
    finally:
        err = await stop_delegate(proc)
    assert proc.returncode == 0, err


async def test_a_refused_app_token_stops_the_start_with_one_line(
    fake_slack: FakeSlack, providers: dict[str, str], tmp_path: Path
) -> None:
    def refused(_args: dict[str, Any]) -> dict[str, Any]:
        raise SlackError("invalid_auth")

    fake_slack.handlers["apps.connections.open"] = refused
    port = free_port()
    proc = await _run_socket_mode(
        tmp_path, fake_slack, port, providers, SLACK_APP_TOKEN="xapp-1-wrong"
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, err
    [line] = err.decode().splitlines()
    assert "Slack refused the app token (invalid_auth)" in line and "SLACK_APP_TOKEN" in line
    assert "xapp-1-wrong" not in line, "secrets must never be logged"
    assert len(fake_slack.calls_to("apps.connections.open")) == 1, "refused once, not retried"


async def test_an_app_token_refused_on_reconnect_stops_trying_after_one_error(
    runner: SocketModeRunner, socket_mode: FakeSocketMode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="bot.socket")
    refusals: list[str] = []
    runner.on_refused = refusals.append

    def refused(_args: dict[str, Any]) -> dict[str, Any]:
        raise SlackError("token_revoked")

    socket_mode.slack.handlers["apps.connections.open"] = refused
    socket_mode.answer_pings = False  # the watchdog reconnects, and Slack refuses the token

    async def told() -> bool:
        return bool(refusals)

    await eventually(told)
    [refusal] = refusals
    assert "SLACK_APP_TOKEN (token_revoked)" in refusal
    assert [r.getMessage() for r in caplog.records] == [f"Socket Mode: {refusal}"]


async def _health_when(
    proc: Any, port: int, predicate: Callable[[int, dict[str, Any]], bool]
) -> Any:
    seen: list[Any] = []

    async def holds() -> bool:
        if proc.returncode is not None:
            _, err = await proc.communicate()
            raise AssertionError(f"delegate run exited early: {err.decode()[-2000:]}")
        answer = await health(port)
        seen[:] = [answer]
        return answer is not None and predicate(*answer)

    try:
        await eventually(holds, interval_s=0.2)
    except TimeoutError:
        raise AssertionError(f"/healthz never held; last answer: {seen}") from None
    return seen[0]


async def test_an_unreachable_slack_starts_red_and_never_blocks_shutdown(
    providers: dict[str, str], tmp_path: Path
) -> None:
    port, nowhere = free_port(), free_port()  # nothing listens on `nowhere`
    proc = await asyncio.create_subprocess_exec(
        str(DELEGATE),
        "run",
        "--host",
        "127.0.0.1",
        env=cli_env(
            **providers,
            DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'd.db'}",
            PORT=str(port),
            SLACK_BOT_TOKEN="xoxb-1-unreachable",
            SLACK_APP_TOKEN=APP_TOKEN,
            SLACK_API_URL=f"http://127.0.0.1:{nowhere}/api/",
        ),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, body = await _health_when(
            proc, port, lambda status, body: status == 503 and "unreachable" in body["socket_mode"]
        )
        assert body["socket_mode"].startswith("not connected: Slack unreachable"), body
        assert body["slack_token"].startswith("unreachable: cannot reach"), body
        assert body["slack_token"].endswith("; retrying"), body
    finally:
        err = await stop_delegate(proc)
    assert proc.returncode == 0, err
