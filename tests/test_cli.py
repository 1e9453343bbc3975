"""The `delegate` command line, run as a real subprocess."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
from importlib import metadata
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import text

from bot.cli import build_parser
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack
from tests.support.cli import DELEGATE, cli_env, delegate, free_port, provider_env
from tests.support.databases import Database
from tests.support.factories import make_order
from tests.support.waiting import eventually
from workers.store import Store
from workers.workorder import Status


def test_console_script_is_installed() -> None:
    assert DELEGATE.exists(), f"`delegate` should be installed beside {sys.executable}"


async def test_help_lists_every_command(tmp_path: Path) -> None:
    code, out, _ = await delegate("--help", env=cli_env(), cwd=tmp_path)
    assert code == 0
    for command in ("run", "worker", "db", "audit", "schema", "doctor"):
        assert command in out


async def test_schema_prints_the_work_order_json_schema(tmp_path: Path) -> None:
    code, out, _ = await delegate("schema", env=cli_env(), cwd=tmp_path)
    assert code == 0
    schema = json.loads(out)
    assert schema["title"] == "WorkOrder"
    assert {"goal", "deliverable", "acceptance_criteria", "budget"} <= set(schema["required"])


async def test_db_upgrade_is_idempotent(tmp_path: Path) -> None:
    env = cli_env(DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    code, out, err = await delegate("db", "upgrade", env=env, cwd=tmp_path)
    assert code == 0, err
    assert "Upgraded database from empty to" in out
    code, out, _ = await delegate("db", "upgrade", env=env, cwd=tmp_path)
    assert code == 0 and "up to date" in out


@pytest.mark.front_door  # what the operator reads; the trail itself: test_audit
async def test_audit_prints_and_verifies(database: Database, tmp_path: Path) -> None:
    store = Store(database.engine())
    order = await store.orders.create_order(make_order(), actor="U1")
    assert order.id
    await store.orders.transition(order.id, Status.AWAITING_CONFIRMATION, actor="intake", reason="drafted")
    env = cli_env(**database.env())

    code, out, _ = await delegate("audit", order.id, env=env, cwd=tmp_path)
    assert code == 0 and f"# Audit trail for {order.id}" in out and "drafted" in out
    code, out, _ = await delegate(
        "audit", order.id.lower(), "--format", "json", env=env, cwd=tmp_path
    )
    assert [e["kind"] for e in json.loads(out)["events"]] == ["created", "transition"]
    code, out, _ = await delegate("audit", "verify", env=env, cwd=tmp_path)
    assert code == 0 and "2 events verified" in out

    trail = await store.audit.audit_trail(order.id)
    async with store.engine.begin() as conn:
        await conn.execute(
            text("UPDATE audit_events SET kind = 'forged' WHERE id = :id"), {"id": trail[1].id}
        )
    code, out, _ = await delegate("audit", "verify", env=env, cwd=tmp_path)
    assert code == 1
    assert f"event #{trail[1].id}" in out and order.id in out
    await store.close()


async def test_audit_of_unknown_or_malformed_order(tmp_path: Path) -> None:
    env = cli_env(DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    await delegate("db", "upgrade", env=env, cwd=tmp_path)
    code, _, err = await delegate("audit", "WO-77", env=env, cwd=tmp_path)
    assert code == 1 and "WO-77 does not exist" in err
    code, _, err = await delegate("audit", "seventy", env=env, cwd=tmp_path)
    assert code == 2 and "expected something like WO-42" in err


async def test_invalid_configuration_names_field_value_and_expectation(tmp_path: Path) -> None:
    config = tmp_path / "delegate.yaml"
    config.write_text("budgets:\n  quick: {max_usd: -1}\n")
    code, _, err = await delegate("doctor", env=cli_env(DELEGATE_CONFIG=str(config)), cwd=tmp_path)
    assert code == 2
    assert "budgets.quick.max_usd = -1" in err and "greater than 0" in err
    assert "Traceback" not in err


async def test_run_without_slack_credentials_explains_what_to_do(tmp_path: Path) -> None:
    code, out, err = await delegate("run", env=cli_env(), cwd=tmp_path)
    assert code == 2
    assert "SLACK_BOT_TOKEN is not set" in err and "manifest.yml" in err
    assert "Traceback" not in err + out


async def test_doctor_names_missing_scopes_and_a_refused_bot_token(
    fake_slack: FakeSlack, tmp_path: Path
) -> None:
    env = cli_env(
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'd.db'}",
        SLACK_BOT_TOKEN=fake_slack.token,
        SLACK_SIGNING_SECRET="0123456789abcdef0123456789abcdef",
        SLACK_API_URL=fake_slack.api_url,
    )
    fake_slack.scopes = ["chat:write"]
    code, out, _ = await delegate("doctor", env=env, cwd=tmp_path)
    assert code == 1
    assert "[ok]   Slack auth.test" in out
    assert "[FAIL] Slack scopes: missing" in out and "app_mentions:read" in out
    code, out, _ = await delegate(
        "doctor", env=env | {"SLACK_BOT_TOKEN": "xoxb-wrong"}, cwd=tmp_path
    )
    assert code == 1 and "Slack refused the token (invalid_auth)" in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_run_serves_health_and_stops_on_sigterm(
    fake_slack: FakeSlack, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    port = _free_port()
    env = cli_env(
        **provider_env(fake_anthropic, fake_openai),
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'd.db'}",
        PORT=str(port),
        SLACK_BOT_TOKEN=fake_slack.token,
        SLACK_SIGNING_SECRET="s3cr3t-signing",
        SLACK_API_URL=fake_slack.api_url,
    )
    proc = await asyncio.create_subprocess_exec(
        str(DELEGATE),
        "run",
        "--host",
        "127.0.0.1",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as session:

            async def answers() -> bool:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(answers, interval_s=0.1)  # fails if it never answers /healthz
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        assert "xoxb" not in err.decode(), "secrets must never be logged"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_worker_command_runs_until_sigterm(
    fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    env = cli_env(
        **provider_env(fake_anthropic, fake_openai),
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'd.db'}",
    )
    proc = await asyncio.create_subprocess_exec(
        str(DELEGATE),
        "worker",
        "--concurrency",
        "2",
        "--port",
        str(free_port()),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        seen = b""
        async with asyncio.timeout(30):
            while b"started with concurrency 2" not in seen:
                line = await proc.stderr.readline()
                assert line, f"the worker exited early: {seen.decode()}"
                seen += line
        assert b"progress goes to the log" in seen
        assert proc.returncode is None, "the worker pool keeps running"
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, (seen + err).decode()
        assert b"stopped" in err, "it ran until the signal and then shut down gracefully"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    code, out, _ = await delegate("--version", env=cli_env(), cwd=tmp_path)
    assert code == 0 and out.strip() == f"delegate {metadata.version('delegate-bot')}"


async def test_bare_delegate_prints_help_without_a_traceback(tmp_path: Path) -> None:
    code, out, err = await delegate(env=cli_env(), cwd=tmp_path)
    assert code in (0, 2)
    assert out.startswith("usage: delegate") and "doctor" in out and "--version" in out
    assert "Traceback" not in out + err


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found[f"{parser.prog} {name}".removeprefix("delegate ")] = child
                found |= _subcommands(child)
    return found


def test_every_command_and_option_says_what_it_does() -> None:
    commands = _subcommands(build_parser())
    assert {"run", "worker", "db upgrade", "db current", "doctor", "show"} <= set(commands)
    for name, parser in commands.items():
        assert parser.description, f"`delegate {name} --help` has no description"
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"`delegate {name}`: {action.dest} has no help"


async def test_a_command_s_help_describes_it_and_each_option(tmp_path: Path) -> None:
    code, out, _ = await delegate("show", "--help", env=cli_env(), cwd=tmp_path)
    assert code == 0
    assert "deliverable and the verifier's verdicts" in out
    assert "WO-42, wo-42 or 42" in out and "time zone for times" in out


@pytest.mark.parametrize(
    "command", [("worker", "--concurrency", "0"), ("run", "--concurrency", "-1")]
)
async def test_a_concurrency_below_one_is_refused_before_anything_starts(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    # Slack credentials and a database that is down: neither is reached.
    env = cli_env(
        DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1:1/delegate",
        SLACK_BOT_TOKEN="xoxb-1-unused",
        SLACK_SIGNING_SECRET="0123456789abcdef0123456789abcdef",
        SLACK_API_URL="http://127.0.0.1:1/api/",
    )
    code, out, err = await delegate(*command, env=env, cwd=tmp_path)
    assert code == 2
    assert f"argument --concurrency: must be at least 1, got {command[-1]}" in err
    assert "Traceback" not in out + err and "database" not in err
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240 (a handful of entries at most)


async def test_db_current_creates_no_database(tmp_path: Path) -> None:
    code, out, err = await delegate("db", "current", env=cli_env(), cwd=tmp_path)
    assert code == 1
    assert "no Delegate database at sqlite+aiosqlite:///delegate.db" in err
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240 (a handful of entries at most)
    code, _, err = await delegate("db", "upgrade", env=cli_env(), cwd=tmp_path)
    assert code == 0, err
    code, out, err = await delegate("db", "current", env=cli_env(), cwd=tmp_path)
    assert code == 0 and out.startswith("applied: "), err
