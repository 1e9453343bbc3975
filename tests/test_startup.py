"""A wrong setup never looks healthy: `delegate run` and `delegate worker` check the Slack tokens
and the model keys before they start, stop with one line for what no retry fixes, start red for
what may pass later, and turn red (once, loudly) when Slack refuses the bot token while running."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack, SlackSender
from tests.fakes.socket_mode import APP_TOKEN, FakeSocketMode
from tests.support.cli import (
    cli_env,
    delegate,
    free_port,
    health,
    provider_env,
    spawn_delegate,
)
from tests.support.databases import Database
from tests.support.processes import stop_worker
from tests.support.settings import single_route
from tests.support.waiting import eventually

SIGNING_SECRET = "0123456789abcdef0123456789abcdef"
TOKEN_REFUSED = "Slack refused the bot token"


@pytest.fixture
async def socket_mode(fake_slack: FakeSlack) -> AsyncIterator[FakeSocketMode]:
    async with FakeSocketMode(fake_slack) as server:
        yield server


@pytest.fixture
def providers(fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI) -> dict[str, str]:
    return provider_env(fake_anthropic, fake_openai)


def _env(
    tmp_path: Path, fake_slack: FakeSlack, *, socket_mode: bool = False, **values: str
) -> dict[str, str]:
    """`delegate run` in HTTP mode (or Socket Mode) against the fake Slack, on SQLite."""
    mode = (
        {"SLACK_APP_TOKEN": APP_TOKEN} if socket_mode else {"SLACK_SIGNING_SECRET": SIGNING_SECRET}
    )
    defaults = {
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'd.db'}",
        "PORT": str(free_port()),
        "SLACK_BOT_TOKEN": fake_slack.token,
        "SLACK_API_URL": fake_slack.api_url,
        **mode,
    }
    return cli_env(**{**defaults, **values})


def _config(tmp_path: Path, **sections: Any) -> str:
    path = tmp_path / "delegate.yaml"
    path.write_text(yaml.safe_dump(sections))
    return str(path)


async def _health_until(
    proc: Any, port: int, predicate: Callable[[int, dict[str, Any]], bool], log: Path
) -> dict[str, Any]:
    seen: list[Any] = []

    async def holds() -> bool:
        if proc.returncode is not None:
            raise AssertionError(f"delegate exited early:\n{_tail(log)}")
        answer = await health(port)
        seen[:] = [answer]
        return answer is not None and predicate(*answer)

    try:
        await eventually(holds, interval_s=0.2)
    except TimeoutError:
        raise AssertionError(f"/healthz never held; last answer: {seen}") from None
    return seen[0][1]  # type: ignore[no-any-return]


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


def _errors(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if " ERROR " in line]


# ------------------------------------------------------------------ refused at start: exit 1


@pytest.mark.parametrize("command", ["run-http", "run-socket", "worker"])
async def test_a_refused_bot_token_stops_the_start_with_one_line(
    command: str,
    fake_slack: FakeSlack,
    socket_mode: FakeSocketMode,
    providers: dict[str, str],
    tmp_path: Path,
) -> None:
    env = _env(
        tmp_path,
        fake_slack,
        socket_mode=command == "run-socket",
        SLACK_BOT_TOKEN="xoxb-bogus",
        **providers,
    )
    args = ("worker", "--port", str(free_port())) if command == "worker" else ("run",)
    code, out, err = await delegate(*args, env=env, cwd=tmp_path)
    assert code == 1, err
    [line] = err.splitlines()
    assert "Slack refused the token (invalid_auth)" in line
    assert "fix:" in line and "SLACK_BOT_TOKEN" in line
    assert "xoxb-bogus" not in out + err, "secrets must never be logged"
    assert not (tmp_path / "d.db").exists(), "nothing is started or created"


@pytest.mark.parametrize("command", ["run", "worker"])
async def test_a_missing_model_key_stops_the_start_naming_the_variable(
    command: str, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    env = _env(tmp_path, fake_slack)  # neither ANTHROPIC_API_KEY nor OPENAI_API_KEY
    args = ("worker", "--port", str(free_port())) if command == "worker" else ("run",)
    code, _, err = await delegate(*args, env=env, cwd=tmp_path)
    assert code == 1, err
    lines = err.splitlines()
    assert len(lines) == 2, err  # one per provider, not one per route
    assert lines[0].startswith("delegate: anthropic API key: ANTHROPIC_API_KEY is not set; fix:")
    assert lines[1].startswith("delegate: openai API key: OPENAI_API_KEY is not set; fix:")


async def test_a_route_to_one_provider_needs_only_its_key(
    fake_slack: FakeSlack, fake_anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    env = _env(
        tmp_path,
        fake_slack,
        ANTHROPIC_BASE_URL=fake_anthropic.base_url,
        DELEGATE_CONFIG=_config(tmp_path, routing=single_route("anthropic:claude-sonnet-4-6")),
    )
    code, _, err = await delegate("run", env=env, cwd=tmp_path)
    assert code == 1, err
    [line] = err.splitlines()
    assert "ANTHROPIC_API_KEY is not set" in line and "OPENAI_API_KEY" not in line


# ------------------------------------------------------------------ unreachable: start red


async def test_an_unreachable_slack_and_provider_start_red_with_the_reason(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = cli_env(
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'd.db'}",
        PORT=str(port := free_port()),
        SLACK_BOT_TOKEN="xoxb-1-unreachable",
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_API_URL=f"{nowhere}/api/",
        ANTHROPIC_API_KEY="sk-ant-test",
        ANTHROPIC_BASE_URL=nowhere,
        OPENAI_API_KEY=fake_openai.api_key,
        OPENAI_BASE_URL=fake_openai.base_url,
    )
    log = tmp_path / "run.log"
    proc = await spawn_delegate("run", "--host", "127.0.0.1", env=env, cwd=tmp_path, log=log)
    try:
        body = await _health_until(proc, port, lambda status, _: status == 503, log)
        assert body["slack_token"].startswith("unreachable: cannot reach"), body
        assert "(ClientConnectorError); retrying" in body["slack_token"]
        assert body["models"].startswith("anthropic API key: could not list anthropic's models")
        assert body["models"].endswith("; retrying")
        assert body["database"] == "ok"
    finally:
        assert await stop_worker(proc, timeout_s=30) == 0, log.read_text()


# ------------------------------------------------------------------ the database


async def test_a_missing_sqlite_directory_is_one_message(
    fake_slack: FakeSlack, providers: dict[str, str], tmp_path: Path
) -> None:
    env = _env(
        tmp_path,
        fake_slack,
        **providers,
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'absent' / 'd.db'}",
    )
    code, _, err = await delegate("run", env=env, cwd=tmp_path)
    assert code == 1
    [line] = err.splitlines()
    assert f"the directory {tmp_path / 'absent'} for the SQLite database does not exist" in line
    assert "DATABASE_URL" in line


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_a_postgres_database_that_does_not_exist_is_one_message(
    database: Database, fake_slack: FakeSlack, providers: dict[str, str], tmp_path: Path
) -> None:
    name = f"absent_{uuid.uuid4().hex[:8]}"
    url = make_url(database.url).set(database=name).render_as_string(hide_password=False)
    env = _env(tmp_path, fake_slack, **providers, DATABASE_URL=url)
    code, _, err = await delegate("worker", "--port", str(free_port()), env=env, cwd=tmp_path)
    assert code == 1
    [line] = err.splitlines()
    assert f"the database '{name}' does not exist" in line and "DATABASE_URL" in line


# ------------------------------------------------------------------ refused while running


async def test_a_token_revoked_while_running_turns_red_with_one_error(
    fake_slack: FakeSlack, providers: dict[str, str], tmp_path: Path
) -> None:
    env = _env(
        tmp_path,
        fake_slack,
        **providers,
        DELEGATE_CONFIG=_config(tmp_path, slack={"token_check_s": 0.2}),
    )
    port, log = int(env["PORT"]), tmp_path / "run.log"
    proc = await spawn_delegate("run", "--host", "127.0.0.1", env=env, cwd=tmp_path, log=log)
    try:
        await _health_until(proc, port, lambda status, _: status == 200, log)
        fake_slack.tokens = set()  # revoked: Slack answers invalid_auth from now on
        body = await _health_until(
            proc, port, lambda _, body: body["worker_loop"].startswith("paused"), log
        )
        assert body["status"] == "unhealthy"
        assert body["slack"] == "token refused (invalid_auth)"
        assert body["slack_token"].startswith("refused (invalid_auth)")
        await fake_slack.wait_until(lambda: len(fake_slack.calls_to("auth.test")) >= 5, within=30)
    finally:
        assert await stop_worker(proc, timeout_s=30) == 0, log.read_text()
    [error] = _errors(log)  # however many calls Slack refused
    assert TOKEN_REFUSED in error and "invalid_auth" in error and "SLACK_BOT_TOKEN" in error


@pytest.mark.parametrize(
    "event",
    [
        {"type": "app_uninstalled"},
        {"type": "tokens_revoked", "tokens": {"oauth": ["U1"], "bot": ["UBOT"]}},
    ],
    ids=["app_uninstalled", "tokens_revoked"],
)
async def test_slack_saying_the_app_lost_its_token_turns_red_with_one_error(
    event: dict[str, Any], fake_slack: FakeSlack, providers: dict[str, str], tmp_path: Path
) -> None:
    env = _env(tmp_path, fake_slack, **providers)
    port, log = int(env["PORT"]), tmp_path / "run.log"
    proc = await spawn_delegate("run", "--host", "127.0.0.1", env=env, cwd=tmp_path, log=log)
    try:
        await _health_until(proc, port, lambda status, _: status == 200, log)
        sender = SlackSender(f"http://127.0.0.1:{port}", SIGNING_SECRET, slack=fake_slack)
        fake_slack.tokens = set()  # as Slack does when it sends these events
        status, _ = await sender.event(event)
        assert status == 200
        # The process flips its own token state, then records the refusal for every process:
        # wait until /healthz shows both.
        body = await _health_until(
            proc, port, lambda status, body: status == 503 and body["slack"] != "ok", log
        )
        assert body["slack_token"].startswith(f"refused ({event['type']})"), body
        assert body["slack"].startswith("token refused ("), body
        await _health_until(
            proc, port, lambda _, body: body["worker_loop"].startswith("paused"), log
        )
    finally:
        assert await stop_worker(proc, timeout_s=30) == 0, log.read_text()
    [error] = _errors(log)
    assert TOKEN_REFUSED in error and event["type"] in error


async def test_user_tokens_revoked_leave_the_bot_working(
    fake_slack: FakeSlack, providers: dict[str, str], tmp_path: Path
) -> None:
    env = _env(tmp_path, fake_slack, **providers)
    port, log = int(env["PORT"]), tmp_path / "run.log"
    proc = await spawn_delegate("run", "--host", "127.0.0.1", env=env, cwd=tmp_path, log=log)
    try:
        await _health_until(proc, port, lambda status, _: status == 200, log)
        sender = SlackSender(f"http://127.0.0.1:{port}", SIGNING_SECRET, slack=fake_slack)
        event = {"type": "tokens_revoked", "tokens": {"oauth": ["U1"], "bot": []}}
        status, _ = await sender.event(event)
        assert status == 200
        await eventually(lambda: "the bot token is not among them" in log.read_text())
        answer = await health(port)
        assert answer is not None and answer[0] == 200, answer
    finally:
        assert await stop_worker(proc, timeout_s=30) == 0, log.read_text()
    assert _errors(log) == []


# ------------------------------------------------------------------ the worker's own surface


async def test_a_worker_serves_its_own_health_and_metrics(
    fake_slack: FakeSlack, providers: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    env = _env(
        tmp_path,
        fake_slack,
        **providers,
        DELEGATE_WORKER_PORT=str(port),
        DELEGATE_CONFIG=_config(tmp_path, slack={"token_check_s": 0.2}),
    )
    log = tmp_path / "worker.log"
    proc = await spawn_delegate("worker", env=env, cwd=tmp_path, log=log)
    try:
        body = await _health_until(
            proc, port, lambda status, body: status == 200 and body["worker_loop"] == "ok", log
        )
        assert body["database"] == "ok" and body["slack_token"] == "ok", body
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            assert response.status == 200
            assert "delegate_queue_depth" in await response.text()
        fake_slack.tokens = set()  # revoked
        # /healthz reads the token's state and the shared problem row one after the other, so
        # one answer can land between the two being set; wait for the token's own word.
        body = await _health_until(
            proc,
            port,
            lambda status, body: status == 503 and body["slack_token"] != "ok",
            log,
        )
        assert body["slack_token"].startswith("refused (invalid_auth)"), body
    finally:
        assert await stop_worker(proc, timeout_s=30) == 0, log.read_text()
