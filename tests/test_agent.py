"""The agent loop end to end against the fake model servers, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from tests.fakes.anthropic import Reply
from tests.fakes.openai import Reply as OpenAIReply
from tests.support.engine import Harness
from tests.support.records import llm_calls
from workers.budget import call_cost_micro_usd
from workers.providers import Usage
from workers.states import WaitKind
from workers.workorder import Status


def _tool_results(body: dict) -> list[dict]:  # type: ignore[type-arg]
    last = body["messages"][-1]
    return [b for b in last["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]


async def test_a_run_reads_the_thread_and_submits_its_deliverable(harness: Harness) -> None:
    h = harness
    order = await h.order()
    await h.store.slack.record_thread_message(
        channel="C1", thread_ts="1700000000.000100", ts="1700000000.000100", text="Please do X", user="U1"
    )
    h.anthropic.script(
        Reply.tool("read_thread", {}, text="Let me read the thread."),
        Reply.tool("submit_deliverable", {"content": "# Table\n| a | b |", "summary": "Done."}),
    )
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "done"

    final = await h.store.orders.get_order(order.id or "")
    assert final.status == Status.AWAITING_REVIEW
    row = await h.store.orders.get_row(order.id or "")
    assert row.lease_owner is None and row.reserved_micro_usd == 0 and row.reserved_tokens == 0
    assert row.model_calls == 2 and row.tool_calls == 2

    # The thread reached the model as fenced, untrusted data.
    second = h.anthropic.requests[1]
    [result] = _tool_results(second)
    assert "Please do X" in result["content"] and result["content"].startswith("<untrusted")
    # The stable prefix is marked for caching; the work order is in the system prompt.
    assert second["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert order.goal in second["system"][0]["text"]
    assert {t["name"] for t in second["tools"]} == {"read_thread", "ask_requester", "submit_deliverable"}

    # Every call is recorded and the order's spend is exactly their sum.
    calls = await llm_calls(h.store, order.id or "")
    assert [c.outcome for c in calls] == ["ok", "ok"]
    assert all(c.provider == "anthropic" and c.role == "execute" for c in calls)
    price = h.settings.price("claude-sonnet-4-6")
    for c in calls:
        usage = Usage(c.input_tokens, c.output_tokens, c.cache_write_tokens, c.cache_read_tokens)
        assert c.cost_micro_usd == call_cost_micro_usd(price, usage) > 0
    assert row.spent_micro_usd == sum(c.cost_micro_usd for c in calls)

    [deliverable] = await h.store.runs.deliverables(order.id or "")
    assert deliverable.content.startswith("# Table") and deliverable.summary == "Done."
    [(oid, result_)] = h.reporter.results.values()
    assert oid == order.id and result_.content == deliverable.content
    assert h.reporter.steps(order.id or "")[-1] == "Deliverable submitted; waiting for review"

    tools = await h.store.runs.tool_calls(order.id or "")
    assert [(t.name, t.allowed, t.outcome) for t in tools] == [
        ("read_thread", True, "ok"),
        ("submit_deliverable", True, "ok"),
    ]
    trail = [e.data.get("to") for e in await h.store.audit.audit_trail(order.id or "") if e.kind == "transition"]
    assert trail == ["queued", "running", "awaiting_review"]
    assert (await h.store.audit.verify_audit())[1] == []


async def test_an_order_without_automatic_checks_goes_straight_to_review(harness: Harness) -> None:
    h = harness
    order = await h.order(verification={"automatic_checks": False, "reviewers": ["U2"]})
    h.anthropic.script(Reply.tool("submit_deliverable", {"content": "x", "summary": "y"}))
    await h.run_next()
    assert (await h.store.orders.get_order(order.id or "")).status == Status.AWAITING_REVIEW


async def test_malformed_arguments_and_chatter_are_returned_to_the_model(harness: Harness) -> None:
    h = harness
    order = await h.order()
    down = Reply.error(529, headers={"retry-after-ms": "1"})
    h.anthropic.script(*[down] * 9)  # Anthropic is down throughout: OpenAI serves every step
    h.openai.script(
        OpenAIReply.tool("submit_deliverable", '{"content": "unterminated'),
        OpenAIReply(text="I think I am done."),
        OpenAIReply.tool("submit_deliverable", {"content": "final", "summary": "ok"}),
    )
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "done", outcome
    second = h.openai.requests[1]["messages"]
    tool_message = next(m for m in second if m["role"] == "tool")
    assert "could not be used" in tool_message["content"]
    third = h.openai.requests[2]["messages"]
    assert "submit_deliverable" in third[-1]["content"]
    tools = await h.store.runs.tool_calls(order.id or "")
    assert tools[0].outcome == "malformed" and tools[0].arguments == {"raw": '{"content": "unterminated'}


async def test_a_refusal_ends_the_run_in_exception(harness: Harness) -> None:
    h = harness
    order = await h.order()
    h.anthropic.script(Reply(text="I can't help with that.", stop_reason="refusal"))
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "exception"
    row = await h.store.orders.get_row(order.id or "")
    assert row.status == "exception" and row.exception_kind == "refusal"
    assert "I can't help with that." in (row.exception_message or "")
    [(oid, kind, message)] = h.reporter.exceptions.values()
    assert (oid, kind) == (order.id, "refusal")
    calls = await llm_calls(h.store, order.id or "")
    assert [c.outcome for c in calls] == ["refusal"]


async def test_a_model_that_never_submits_is_stopped(harness: Harness) -> None:
    h = harness
    order = await h.order()
    h.anthropic.script("Thinking...", "Still thinking...", "Hmm.")
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "exception"
    row = await h.store.orders.get_row(order.id or "")
    assert row.exception_kind == "stalled" and row.model_calls == 3


async def test_checkpoints_hold_the_history_after_every_step(harness: Harness) -> None:
    h = harness
    order = await h.order()
    h.anthropic.script(
        Reply.tool("read_thread", {}),
        Reply.tool("submit_deliverable", {"content": "c", "summary": "s"}),
    )
    await h.run_next()
    attempt = await h.store.runs.latest_checkpoint(order.id or "")
    assert attempt is not None and attempt.step == 2
    roles = [m["role"] for m in attempt.checkpoint]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert json.dumps(attempt.checkpoint)  # plain JSON


async def test_a_long_rate_limit_puts_the_run_back_in_the_queue(harness: Harness) -> None:
    h = harness
    order = await h.order()
    h.anthropic.script(Reply.tool("read_thread", {}), Reply.error(429, retry_after=900))
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "requeued"
    row = await h.store.orders.get_row(order.id or "")
    assert row.status == Status.QUEUED.value and row.lease_owner is None
    assert "900" in (row.wait_reason or "") and row.wait_kind == WaitKind.PROVIDER
    assert row.available_at is not None
    assert await h.run_next() is None  # not before the provider's Retry-After
    [(oid, reason)] = h.reporter.waits
    assert oid == order.id and "model provider" in reason
