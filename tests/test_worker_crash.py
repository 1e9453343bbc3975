"""A worker process killed with SIGKILL mid-run: another one finishes the order from the
checkpoint, and nothing is posted to Slack twice."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.anthropic import FakeAnthropic, Reply
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack
from tests.support.databases import Database
from tests.support.factories import make_order
from tests.support.processes import spawn_worker, stop_worker, worker_env
from tests.support.records import attempts as fetch_attempts
from tests.support.records import llm_calls
from tests.support.waiting import eventually
from workers import queue
from workers.config import load_settings
from workers.store import Store
from workers.workorder import Status


def _posts(fake_slack: FakeSlack) -> list[str]:
    """Idempotency keys of every chat.postMessage, from the message metadata."""
    keys = []
    for call in fake_slack.calls_to("chat.postMessage"):
        metadata: Any = call.args.get("metadata") or {}
        keys.append(metadata.get("event_payload", {}).get("key", "?"))
    return keys


async def test_a_killed_worker_s_run_is_finished_by_another_worker(
    database: Database,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    fake_slack: FakeSlack,
    tmp_path: Path,
) -> None:
    store = Store(database.engine())
    settings = load_settings(database_url=database.url)
    draft = make_order(status=Status.AWAITING_CONFIRMATION)
    order = await store.orders.create_order(draft, actor="U1")
    order_id = order.id or ""
    await queue.enqueue(store, settings, order_id, actor="U1")
    fake_anthropic.script(
        Reply.tool("read_thread", {}),
        Reply(text="(this answer never arrives)", delay=60),
    )
    env = worker_env(database, fake_anthropic, fake_openai, tmp_path, slack_api_url=fake_slack.api_url)

    first = await spawn_worker(env, tmp_path, worker_id="doomed")
    try:
        await eventually(lambda: len(fake_anthropic.requests) == 2, timeout_s=30)
        await eventually(lambda: f"{order_id}:status" in _posts(fake_slack), timeout_s=10)
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    row = await store.orders.get_row(order_id)
    assert row.status == Status.RUNNING.value and row.lease_owner == "doomed"
    assert row.reserved_micro_usd > 0  # the call it died in was still reserved

    fake_anthropic.script(Reply.tool("submit_deliverable", {"content": "the table", "summary": "ok"}))
    second = await spawn_worker(env, tmp_path, worker_id="rescuer")
    try:
        async def delivered() -> bool:
            return (await store.orders.get_order(order_id)).status == Status.AWAITING_REVIEW

        await eventually(delivered, timeout_s=30)
        await eventually(lambda: f"{order_id}:result" in " ".join(_posts(fake_slack)), timeout_s=10)
        # The status message is edited in place to the final state (its own outbox row, sent
        # beside the result).
        await eventually(lambda: bool(fake_slack.calls_to("chat.update")), timeout_s=10)
    finally:
        assert await stop_worker(second) == 0

    # Resumed from the checkpoint: the first step was not repeated.
    assert len(fake_anthropic.requests) == 3
    resumed = fake_anthropic.requests[2]["messages"]
    assert [m["role"] for m in resumed] == ["user", "assistant", "user"]
    assert resumed[1]["content"][0]["name"] == "read_thread"

    # One status message (updated in place afterwards) and one result: nothing posted twice.
    posts = _posts(fake_slack)
    assert posts.count(f"{order_id}:status") == 1, posts
    assert len([k for k in posts if k.startswith(f"{order_id}:result")]) == 1, posts
    assert len(posts) == len(set(posts)), posts
    assert fake_slack.calls_to("chat.update")

    attempts = await fetch_attempts(store, order_id)
    assert [(a.worker_id, a.outcome) for a in attempts] == [
        ("doomed", "lost"),
        ("rescuer", "submitted"),
    ]
    calls = await llm_calls(store, order_id)
    assert [c.outcome for c in calls] == ["ok", "interrupted", "ok"]
    assert calls[1].cost_micro_usd == calls[1].reserved_micro_usd  # charged the worst case
    row = await store.orders.get_row(order_id)
    assert row.reserved_micro_usd == 0 and row.lost_leases == 1
    assert row.spent_micro_usd == sum(c.cost_micro_usd for c in calls)
    assert len(await store.runs.deliverables(order_id)) == 1
    await store.close()


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_delegate_worker_runs_and_stops_on_sigterm(
    database: Database, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    store = Store(database.engine())
    settings = load_settings(database_url=database.url)
    order = await store.orders.create_order(make_order(status=Status.AWAITING_CONFIRMATION), actor="U1")
    await queue.enqueue(store, settings, order.id or "", actor="U1")
    fake_anthropic.script(Reply.tool("submit_deliverable", {"content": "c", "summary": "s"}))
    env = worker_env(database, fake_anthropic, fake_openai, tmp_path)
    process = await spawn_worker(env, tmp_path, worker_id="solo", concurrency=2)
    try:

        async def delivered() -> bool:
            return (await store.orders.get_order(order.id or "")).status == Status.AWAITING_REVIEW

        await eventually(delivered, timeout_s=30)
    finally:
        assert await stop_worker(process) == 0
    assert "worker solo stopped" in (tmp_path / "solo.log").read_text()
    await store.close()
