"""Resuming runs from checkpoints: after a budget extension, mid-turn, with messages waiting."""

from __future__ import annotations

from tests.fakes.anthropic import Reply, ToolUse
from tests.support.engine import Harness
from workers.store.runs import Checkpoint
from workers import queue
from workers.workorder import Budget, Status


async def test_extend_after_a_budget_exception_resumes_where_it_stopped(harness: Harness) -> None:
    h = harness
    order = await h.order(
        budget=Budget(max_usd=10, max_tokens=1_000_000, max_wall_clock_s=60, max_tool_calls=1)
    )
    h.anthropic.script(Reply.tool("read_thread", {}), Reply.tool("read_thread", {}))
    await h.run_next()
    row = await h.store.orders.get_row(order.id or "")
    assert (row.status, row.exception_kind) == ("exception", "budget")

    extended = order.budget.model_copy(update={"max_tool_calls": 3})
    await h.store.orders.update_order(
        order.id or "", actor="U9", expected={Status.EXCEPTION}, reason="extend", budget=extended
    )
    await queue.enqueue(h.store, h.settings, order.id or "", actor="U9", reason="extended")
    h.anthropic.script(Reply.tool("submit_deliverable", {"content": "c", "summary": "s"}))
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "done"
    # The second read_thread (cut off by the ceiling) ran on resume; the model was not asked again.
    assert len(h.anthropic.requests) == 3
    last = h.anthropic.requests[2]["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "user", "assistant", "user"]
    assert (await h.store.orders.get_row(order.id or "")).tool_calls == 3  # two reads and the submission


async def test_tools_without_results_run_again_on_resume(harness: Harness) -> None:
    h = harness
    order = await h.order()
    claim = await queue.claim(h.store, h.settings, "w1")
    assert claim.attempt is not None and claim.attempt.id is not None
    # The worker saved the model's reply and died before the tools ran.
    history = [
        {"role": "user", "content": [{"type": "text", "text": "go"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "read_thread", "input": {}},
                {"type": "tool_use", "id": "toolu_2", "name": "read_thread", "input": {}},
            ],
        },
    ]
    await h.store.runs.save_step(
        claim.attempt.id, checkpoint=Checkpoint(history, step=1, elapsed_ms=500)
    )
    await h.store.queue.finish_run(order.id or "", "w1", Status.QUEUED, reason="test: worker died")
    h.anthropic.script(Reply.tool("submit_deliverable", {"content": "c", "summary": "s"}))
    outcome = await h.run_next(worker_id="w2")
    assert outcome is not None and outcome.kind == "done"
    [request] = h.anthropic.requests
    results = request["messages"][-1]["content"]
    assert [b["tool_use_id"] for b in results] == ["toolu_1", "toolu_2"]
    assert (await h.store.orders.get_row(order.id or "")).elapsed_ms >= 500


async def test_a_message_from_the_requester_reaches_the_next_step(harness: Harness) -> None:
    h = harness
    order = await h.order()
    await h.store.queue.add_to_inbox(
        order.id or "",
        {"kind": "reply", "user": "U1", "text": "Also cover Initech"},
        actor="U1",
        expected={Status.QUEUED},
    )
    h.anthropic.script(Reply.tool("submit_deliverable", {"content": "c", "summary": "s"}))
    await h.run_next()
    first = h.anthropic.requests[0]["messages"][0]["content"]
    assert any("Also cover Initech" in b.get("text", "") for b in first)
    assert (await h.store.orders.get_row(order.id or "")).inbox == []


async def test_a_question_asked_alongside_other_tools_waits_for_its_answer(harness: Harness) -> None:
    h = harness
    order = await h.order()
    h.anthropic.script(
        Reply(tool_uses=[ToolUse("ask_requester", {"question": "Which region?"}), ToolUse("read_thread", {})])
    )
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "parked"
    assert (await h.store.orders.get_order(order.id or "")).status == Status.WAITING_FOR_REQUESTER
    await queue.resume_with_reply(h.store, order.id or "", "EMEA", user="U1")
    h.anthropic.script(Reply.tool("submit_deliverable", {"content": "c", "summary": "s"}))
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "done"
    results = h.anthropic.requests[1]["messages"][-1]["content"]
    names = {b["tool_use_id"]: b["content"] for b in results if b["type"] == "tool_result"}
    assert len(names) == 2 and any("EMEA" in text for text in names.values())
    assert len(h.reporter.questions) == 1


async def test_wall_clock_carries_over_between_attempts(harness: Harness) -> None:
    h = harness
    order = await h.order(
        budget=Budget(max_usd=10, max_tokens=1_000_000, max_wall_clock_s=2, max_tool_calls=10)
    )
    claim = await queue.claim(h.store, h.settings, "w1")
    assert claim.attempt is not None and claim.attempt.id is not None
    await h.store.runs.save_step(
        claim.attempt.id, checkpoint=Checkpoint([{"role": "user", "content": "go"}], step=0, elapsed_ms=2500)
    )
    await h.store.queue.finish_run(order.id or "", "w1", Status.QUEUED, reason="test")
    outcome = await h.run_next(worker_id="w2")
    assert outcome is not None and outcome.kind == "exception"
    row = await h.store.orders.get_row(order.id or "")
    assert row.exception_kind == "budget" and "wall-clock" in (row.exception_message or "")
    assert h.anthropic.requests == []


async def test_changes_requested_continue_the_run_with_the_feedback(harness: Harness) -> None:
    h = harness
    order = await h.order()
    h.anthropic.script(Reply.tool("submit_deliverable", {"content": "v1", "summary": "first"}))
    await h.run_next()
    for target in (Status.CHANGES_REQUESTED,):
        await h.store.orders.transition(order.id or "", target, actor="U2", reason="review")
    await h.store.queue.add_to_inbox(
        order.id or "",
        {"kind": "feedback", "user": "U2", "text": "Add a column for annual prices."},
        expected={Status.CHANGES_REQUESTED},
        actor="U2",
        resume=False,
    )
    await queue.enqueue(h.store, h.settings, order.id or "", actor="U2", reason="rework")
    h.anthropic.script(Reply.tool("submit_deliverable", {"content": "v2", "summary": "second"}))
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "done"
    revised = h.anthropic.requests[1]["messages"][-1]["content"]
    assert any("annual prices" in b.get("text", "") for b in revised)
    deliverables = await h.store.runs.deliverables(order.id or "")
    assert [d.content for d in deliverables] == ["v1", "v2"]
    assert len(h.reporter.results) == 2 and h.reporter.duplicates == []
    assert (await h.store.orders.get_order(order.id or "")).status == Status.AWAITING_REVIEW
