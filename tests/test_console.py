"""`delegate console`: the same dialogue driven through standard input, as a script would."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fakes.anthropic import FakeAnthropic
from tests.support.intake import chat, draft, questions
from workers import queue
from workers.store import Store
from workers.workorder import Status, WorkloadClass

DELEGATE = Path(sys.executable).with_name("delegate")


def _env(settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DELEGATE_"))}
    env.update(
        DATABASE_URL=settings.database_url,
        ANTHROPIC_API_KEY=settings.anthropic_api_key.get_secret_value(),
        ANTHROPIC_BASE_URL=settings.anthropic_base_url,
        OPENAI_API_KEY=settings.openai_api_key.get_secret_value(),
        OPENAI_BASE_URL=settings.openai_base_url,
    )
    return env


async def _console(settings: Any, stdin: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(DELEGATE),
        "console",
        *args,
        env=_env(settings),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_console_dialogue_ends_with_the_confirmed_order_id(
    fake_anthropic: FakeAnthropic, settings_factory: Callable[..., Any]
) -> None:
    settings = settings_factory()
    fake_anthropic.script(questions("Which competitors?"), draft())
    code, out, err = await _console(
        settings, "help with competitor pricing\nAcme, Globex and Initech\nyes\n", "--user", "U1"
    )
    assert code == 0, err
    assert "1. Which competitors?" in out
    assert "[ ] Covers Acme, Globex and Initech" in out and "$2.00 · 15 min · 40 tool calls" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("Confirmed WO-")

    store = Store.from_url(settings.database_url)
    try:
        order = await store.get_order(last.removeprefix("Confirmed "))
        assert order.status is Status.QUEUED and order.requester == "U1"
        assert "Acme, Globex and Initech" in str(fake_anthropic.requests[1]["messages"])
    finally:
        await store.close()


async def test_console_declined_draft_and_chat_confirm_nothing(
    fake_anthropic: FakeAnthropic, settings_factory: Callable[..., Any]
) -> None:
    settings = settings_factory()
    fake_anthropic.script(draft())
    code, out, _ = await _console(settings, "pricing table\nno\n")
    assert code == 1 and "No work order was confirmed." in out
    fake_anthropic.script(
        chat("EBITDA means earnings before interest, taxes, depreciation and amortisation.")
    )
    code, out, _ = await _console(settings, "what is EBITDA?\n")
    assert code == 1 and "earnings before interest" in out
    code, out, _ = await _console(settings, "")
    assert code == 1 and "No work order was confirmed." in out


async def test_console_confirmed_orders_queue_with_their_workload_priority(
    fake_anthropic: FakeAnthropic, settings_factory: Callable[..., Any]
) -> None:
    """Quick and deep work confirmed in the console is queued like a Start in Slack."""
    settings = settings_factory()
    store = Store.from_url(settings.database_url)
    try:
        for workload in ("quick", "deep"):
            fake_anthropic.script(draft(workload_class=workload))
            code, out, err = await _console(settings, "pricing table\nyes\n", "--user", "U1")
            assert code == 0, err
            order_id = out.strip().splitlines()[-1].removeprefix("Confirmed ")
            row = await store.get_row(order_id)
            assert row.status == "queued"
            assert row.priority == queue.priority_of(settings, workload)
            assert row.priority == settings.priorities[WorkloadClass(workload)]
    finally:
        await store.close()


async def test_the_console_shows_local_times_and_how_to_follow_the_order(
    fake_anthropic: FakeAnthropic, settings_factory: Callable[..., Any]
) -> None:
    settings = settings_factory()
    fake_anthropic.script(draft(deadline="2031-01-10T09:30"))
    code, out, err = await _console(settings, "pricing table\nyes\n", "--tz", "Europe/Berlin")
    assert code == 0, err
    # The model writes local time; the console shows it back in the same zone, not UTC.
    assert "Deadline:     Fri 2031-01-10 09:30 (Europe/Berlin)" in out
    assert "thread" not in out.lower()
    lines = out.strip().splitlines()
    order_id = lines[-1].removeprefix("Confirmed ")
    assert lines[-2] == f"Follow it with: delegate show {order_id} --tz Europe/Berlin"

    proc = await asyncio.create_subprocess_exec(
        str(DELEGATE),
        "show",
        order_id,
        "--tz",
        "Europe/Berlin",
        env=_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    shown, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = shown.decode()
    assert proc.returncode == 0
    assert f"{order_id}: Competitor pricing one-pager" in text
    assert "State:        queued" in text and "$0.00 of $2.00" in text
    assert "Deadline:     Fri 2031-01-10 09:30 (Europe/Berlin)" in text
    assert "Deliverable:  (nothing submitted yet)" in text


async def test_a_follow_up_at_the_confirmation_refines_the_draft(
    fake_anthropic: FakeAnthropic, settings_factory: Callable[..., Any]
) -> None:
    """Anything but yes or no refines the draft, as a reply in a Slack thread does."""
    settings = settings_factory()
    fake_anthropic.script(draft(), draft(workload_class="deep", max_usd=5))
    code, out, err = await _console(
        settings, "pricing table\nmake the budget $5 instead\nyes\n", "--user", "U1"
    )
    assert code == 0, err
    first, refined = out.split("Here is the work order I drafted:")[1:]
    assert "$2.00 · 15 min" in first and "$5.00 · 60 min" in refined
    # The model refines what it drafted: it is shown the draft and the follow-up.
    conversation = str(fake_anthropic.requests[1]["messages"])
    assert "Competitor pricing one-pager" in conversation
    assert "make the budget $5 instead" in conversation

    store = Store.from_url(settings.database_url)
    try:
        order = await store.get_order(out.strip().splitlines()[-1].removeprefix("Confirmed "))
        assert order.budget.max_usd == 5 and order.workload_class is WorkloadClass.DEEP
    finally:
        await store.close()
