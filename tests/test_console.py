"""`delegate console`: the same dialogue driven through standard input, as a script would."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fakes.anthropic import FakeAnthropic, Reply
from tests.fakes.openai import FakeOpenAI
from tests.fakes.openai import Reply as OpenAIReply
from tests.support.cli import delegate
from tests.support.factories import make_order
from tests.support.intake import chat, draft, questions
from tests.support.processes import spawn_worker, stop_worker
from tests.support.waiting import PROCESS_START_S, eventually
from workers import queue
from workers.migrate import upgrade
from workers.store import Store
from workers.workorder import Status, WorkloadClass


def _env(settings: Any) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "DELEGATE_")) and not k.endswith("_FILE")
    }
    env.update(
        DATABASE_URL=settings.database_url,
        ANTHROPIC_API_KEY=settings.anthropic_api_key.get_secret_value(),
        ANTHROPIC_BASE_URL=settings.anthropic_base_url,
        OPENAI_API_KEY=settings.openai_api_key.get_secret_value(),
        OPENAI_BASE_URL=settings.openai_base_url,
    )
    return env


async def _console(settings: Any, stdin: str, *args: str) -> tuple[int, str, str]:
    return await delegate("console", *args, env=_env(settings), stdin=stdin)


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
        order = await store.orders.get_order(last.removeprefix("Confirmed "))
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
            row = await store.orders.get_row(order_id)
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

    code, text, _ = await delegate("show", order_id, "--tz", "Europe/Berlin", env=_env(settings))
    assert code == 0
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
        order = await store.orders.get_order(out.strip().splitlines()[-1].removeprefix("Confirmed "))
        assert order.budget.max_usd == 5 and order.workload_class is WorkloadClass.DEEP
    finally:
        await store.close()


def _submit(content: str) -> Reply:
    return Reply.tool("submit_deliverable", {"content": content, "summary": "Done."})


def _all_met() -> OpenAIReply:
    """The verifier's verdicts (OpenAI verifies in the shipped routing)."""
    return OpenAIReply.tool(
        "record_verdicts",
        {"verdicts": [{"index": i, "passed": True, "reason": "ok"} for i in (1, 2, 3)]},
    )


async def test_the_console_trial_ends_with_the_reviewers_decision(
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    settings_factory: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """README's trial without Slack: console, worker, show, review (with one rework)."""
    settings = settings_factory()
    env = _env(settings)
    fake_anthropic.script(draft(), _submit("| Acme | $10 |"), _submit("| Acme | $10 | $99 |"))
    fake_openai.script(_all_met(), _all_met())
    code, out, err = await _console(settings, "pricing table\nyes\n", "--user", "U1")
    assert code == 0, err
    order_id = out.strip().splitlines()[-1].removeprefix("Confirmed ")

    store = Store.from_url(settings.database_url)
    worker = await spawn_worker(env, tmp_path, worker_id="trial")
    try:

        async def in_review() -> bool:
            return (await store.orders.get_order(order_id)).status is Status.AWAITING_REVIEW

        await eventually(in_review, timeout_s=PROCESS_START_S)
        code, out, _ = await delegate("show", order_id, env=env)
        assert code == 0 and "State:        awaiting review" in out and "| Acme | $10 |" in out
        assert f"Decide with:  delegate review {order_id} approve|reject|changes" in out
        assert out.rstrip().endswith("--user U1")

        # Nobody else was named, so the requester decides; nobody else may.
        code, _, err = await delegate("review", order_id, "approve", "--user", "U2", env=env)
        assert code == 1 and f"only the reviewer (U1) can decide {order_id}" in err
        code, _, err = await delegate("review", order_id, "changes", "--user", "U1", env=env)
        assert code == 2 and "say what should change" in err

        code, out, err = await delegate(
            "review", order_id, "changes", "Add the enterprise tier", "--user", "U1", env=env
        )
        assert code == 0, err
        assert f"Requested changes on {order_id}" in out
        await eventually(in_review)  # the worker reworked it
        assert "Add the enterprise tier" in str(fake_anthropic.requests[-1]["messages"])

        code, out, err = await delegate("review", order_id, "approve", "--user", "U1", env=env)
        assert code == 0, err
        assert out.strip() == f"Approved {order_id} (self-approved: you are its requester)."
        assert (await store.orders.get_order(order_id)).status is Status.APPROVED
        code, out, _ = await delegate("show", order_id, env=env)
        assert "State:        approved (self-approved: by its requester)" in out and "| Acme | $10 | $99 |" in out
        code, _, err = await delegate("review", order_id, "reject", "--user", "U1", env=env)
        assert code == 1 and f"{order_id} has already been decided (approved)" in err
    finally:
        await stop_worker(worker)
        await store.close()


async def test_review_refuses_slack_orders_and_bad_ids(
    settings_factory: Callable[..., Any],
) -> None:
    """An order from Slack is decided on its review prompt, where the thread shows it."""
    settings = settings_factory()
    env = _env(settings)
    store = Store.from_url(settings.database_url)
    try:
        await upgrade(store.engine)
        created = await store.orders.create_order(
            make_order(status=Status.AWAITING_REVIEW, verification={"reviewers": ["U7"]}),
            actor="U1",
        )
    finally:
        await store.close()
    code, _, err = await delegate("review", created.id or "", "approve", "--user", "U7", env=env)
    assert code == 1 and "was requested in Slack: decide it on its review prompt" in err
    code, _, err = await delegate("review", "WO-999", "approve", "--user", "U7", env=env)
    assert code == 1 and "there is no work order WO-999" in err
    code, _, err = await delegate("review", "banana", "approve", env=env)
    assert code == 2 and "Traceback" not in err
