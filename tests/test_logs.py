"""Logs an on-call engineer can use: JSON lines that carry the order, attempt, worker and role,
quiet by default, and never a secret."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.anthropic import FakeAnthropic, Reply
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack
from tests.support.cli import (
    DELEGATE,
    cli_env,
    delegate,
    free_port,
    health,
    provider_env,
    stop_delegate,
)
from tests.support.databases import Database
from tests.support.factories import make_order
from tests.support.processes import spawn_worker, stop_worker, worker_env
from tests.support.waiting import eventually
from workers import logs, queue
from workers.config import load_settings
from workers.store import Store
from workers.workorder import Status


@pytest.mark.front_door  # the log's shape, not the database's
async def test_json_lines_follow_one_order_across_the_worker(
    database: Database, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    store = Store(database.engine())
    settings = load_settings(database_url=database.url)
    order = await store.orders.create_order(make_order(status=Status.AWAITING_CONFIRMATION), actor="U1")
    await queue.enqueue(store, settings, order.id or "", actor="U1")
    # Anthropic is down for the first step, so the router logs a failover with its role.
    down = Reply.error(529, headers={"retry-after-ms": "1"})
    fake_anthropic.script(down, down, down, Reply.tool("submit_deliverable", {"content": "c", "summary": "s"}))
    fake_openai.script("thinking")
    env = worker_env(database, fake_anthropic, fake_openai, tmp_path) | {
        "DELEGATE_LOG_FORMAT": "json"
    }
    process = await spawn_worker(env, tmp_path, worker_id="w-json")
    try:

        async def delivered() -> bool:
            return (await store.orders.get_order(order.id or "")).status == Status.AWAITING_REVIEW

        await eventually(delivered, timeout_s=30)
    finally:
        assert await stop_worker(process) == 0
        await store.close()
    lines = (tmp_path / "w-json.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "message"} <= e.keys() for e in entries)
    about = [e for e in entries if e.get("order") == order.id]
    assert about, lines
    failover = next(e for e in about if "trying the next route" in e["message"])
    assert failover["role"] == "execute" and failover["worker"] == "w-json"
    assert failover["attempt"]
    ended = next(e for e in about if e["message"].startswith("run ended"))
    assert ended["worker"] == "w-json" and ended["attempt"] == failover["attempt"]
    assert not [e for e in entries if e["logger"].startswith("alembic")]  # quiet by default


@pytest.fixture(autouse=True)
def root_logger_restored() -> Iterator[None]:
    """`logs.configure` replaces the root handlers with one on this test's captured stderr:
    put pytest's back, or every later test's log line fails on a closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_secrets_never_reach_a_log_line(capsys: pytest.CaptureFixture[str]) -> None:
    signing = "0123456789abcdef0123456789abcdef"
    logs.configure(format="json", secrets=[signing])
    log = logging.getLogger("delegate.test")
    log.warning("token xoxb-1234-5678-abcdefgh and xapp-1-A111-222-xyz")
    log.warning("keys %s %s", "sk-ant-api03-secretsecret", "sk-proj-abcdefghij")
    log.warning("signing secret is %s", signing)
    try:
        raise RuntimeError(f"boom with {signing}")
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("slack_bolt.AsyncApp").warning(
        "As you gave `client` as well, `token` will be unused."
    )
    err = capsys.readouterr().err
    for secret in ("xoxb-1234", "xapp-1-A111", "sk-ant-api03", "sk-proj-abc", signing):
        assert secret not in err
    lines = [json.loads(line) for line in err.splitlines()]
    assert len(lines) == 4 and all("[redacted]" in e["message"] + e.get("exception", "") for e in lines)


def test_text_lines_carry_the_bound_context(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(format="text")
    with logs.scope(order="WO-42", attempt=3, worker="w1", role="verify"):
        logging.getLogger("workers.x").info("checking")
    logging.getLogger("workers.x").info("outside")
    first, second = capsys.readouterr().err.splitlines()
    assert first.endswith("checking [order=WO-42 attempt=3 worker=w1 role=verify]")
    assert second.endswith("outside")


async def test_a_run_logs_its_start_digests_and_stop_once_without_scheduler_chatter(
    fake_slack: FakeSlack, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    config = tmp_path / "delegate.yaml"
    # Every minute, so last week's digest is due as soon as the scheduler starts; an empty week
    # is posted only with post_empty, and only once Delegate was installed before it.
    config.write_text(
        "digests:\n  - {channel: C0LEADS, cron: '* * * * *', teams: [default], post_empty: true}\n"
    )
    database = tmp_path / "d.db"
    code, _, err = await delegate(
        "db", "upgrade", env=cli_env(DATABASE_URL=f"sqlite+aiosqlite:///{database}")
    )
    assert code == 0, err
    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE installation SET installed_at = '2026-01-01 00:00:00.000000'")
    port = free_port()
    env = cli_env(
        DATABASE_URL=f"sqlite+aiosqlite:///{database}",
        DELEGATE_CONFIG=str(config),
        PORT=str(port),
        SLACK_BOT_TOKEN=fake_slack.token,
        SLACK_SIGNING_SECRET="0123456789abcdef0123456789abcdef",
        SLACK_API_URL=fake_slack.api_url,
        **provider_env(fake_anthropic, fake_openai),
    )
    proc = await asyncio.create_subprocess_exec(
        str(DELEGATE), "run", "--host", "127.0.0.1", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await eventually(lambda: bool(fake_slack.calls_to("chat.postMessage")), timeout_s=60)
        await eventually(lambda: health(port), timeout_s=60)
    finally:
        err = await stop_delegate(proc)
    assert proc.returncode == 0, err
    lines = err.splitlines()
    assert not [line for line in lines if " apscheduler" in line], err
    assert len([line for line in lines if "Delegate listening on" in line]) == 1, err
    assert len([line for line in lines if "digest for default" in line]) == 1, err
    assert len([line for line in lines if "Delegate stopped" in line]) == 1, err
