"""The model router against the fake Anthropic and OpenAI servers: routing, failover, retry
policy, caching, and the record of every call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI

from tests.fakes.anthropic import FakeAnthropic, Reply
from tests.fakes.openai import FakeOpenAI
from tests.fakes.openai import Reply as OpenAIReply
from tests.support.databases import Database
from tests.support.engine import Harness
from tests.support.records import llm_calls
from tests.support.settings import engine_settings, single_route
from tests.support.waiting import eventually
from workers.budget import BudgetGuard, call_cost_micro_usd
from workers.errors import ProviderRejected, ProviderUnavailable, RetryLater
from workers.providers import ModelRequest, ModelRouter, ToolSpec, Usage
from workers.store import Store

FAST = {"retry-after-ms": "1"}  # let the SDK retry at once
REQUEST = ModelRequest(
    system="You are terse.",
    messages=[{"role": "user", "content": "Say hi."}],
    tools=[ToolSpec("submit", "Hand in.", {"type": "object", "properties": {}})],
    max_output_tokens=200,
)


class FakeAnthropicSpendLimit(FakeAnthropic):
    """The fake cannot put `error.details.error_code` in an error body; this one can."""

    def __init__(self) -> None:
        super().__init__()
        self.spend_limited = False

    async def _handle_messages(self, request: web.Request) -> web.StreamResponse:
        if not self.spend_limited:
            return await super()._handle_messages(request)
        self.requests.append(await request.json())
        body = {
            "type": "error",
            "error": {
                "type": "rate_limit_error",
                "message": "Your organization has reached its monthly spend limit.",
                "details": {"error_code": "enforced_spend_limit_reached"},
            },
        }
        return web.json_response(body, status=429, headers={"retry-after": "1"})


@pytest.fixture
async def spend_limited_anthropic() -> AsyncIterator[FakeAnthropicSpendLimit]:
    async with FakeAnthropicSpendLimit() as fake:
        yield fake


async def test_routes_by_role_and_records_the_call(harness: Harness) -> None:
    h = harness
    h.anthropic.script(Reply(text="hi", usage={"input_tokens": 100, "output_tokens": 10}))
    reply = await h.router.complete("intake", "quick", REQUEST)
    assert (reply.provider, reply.text, reply.stop_reason) == ("anthropic", "hi", "end_turn")
    assert h.anthropic.last_request["model"] == "claude-sonnet-4-6"
    assert h.anthropic.last_request["max_tokens"] == 200
    [call] = await _all_calls(h.store)
    assert (call.order_id, call.role, call.provider, call.model) == (
        None,
        "intake",
        "anthropic",
        "claude-sonnet-4-6",
    )
    price = h.settings.price("claude-sonnet-4-6")
    assert call.cost_micro_usd == call_cost_micro_usd(price, Usage(100, 10, 0, 0)) == 450
    assert call.outcome == "ok" and call.latency_ms >= 0


async def test_cache_usage_is_priced_by_kind(harness: Harness) -> None:
    h = harness
    usage = {
        "input_tokens": 10,
        "output_tokens": 20,
        "cache_creation_input_tokens": 1000,
        "cache_read_input_tokens": 3000,
    }
    h.anthropic.script(Reply(text="hi", usage=usage))
    reply = await h.router.complete("execute", "standard", REQUEST)
    assert reply.usage == Usage(10, 20, 1000, 3000)
    [call] = await _all_calls(h.store)
    assert (call.cache_write_tokens, call.cache_read_tokens) == (1000, 3000)
    # claude-sonnet-4-6: $3 in, $15 out, $3.75 cache write, $0.30 cache read per million.
    assert call.cost_micro_usd == 10 * 3 + 20 * 15 + 1000 * 3.75 + 3000 * 0.3
    body = h.anthropic.last_request
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}


async def test_repeated_529_fails_over_to_the_fallback(harness: Harness) -> None:
    h = harness
    h.anthropic.script(*[Reply.error(529, headers=FAST)] * 3)
    h.openai.script(OpenAIReply(text="from openai"))
    reply = await h.router.complete("execute", "standard", REQUEST)
    assert (reply.provider, reply.model, reply.text) == ("openai", "gpt-5-mini", "from openai")
    # Three attempts on the primary (engine.provider_attempts), each one recorded.
    assert len(h.anthropic.requests) == 3
    calls = await _all_calls(h.store)
    assert [(c.provider, c.outcome) for c in calls] == [
        ("anthropic", "failed:transient"),
        ("anthropic", "failed:transient"),
        ("anthropic", "failed:transient"),
        ("openai", "ok"),
    ]
    assert calls[0].cost_micro_usd == 0 and "529" in (calls[0].error or "")


async def test_the_sdks_never_retry_behind_the_routers_back(harness: Harness) -> None:
    """The harness builds its SDK clients with max_retries=1; the router turns that off, so
    every request the provider sees is a call the budget reserved and the ledger recorded."""
    h = harness
    h.anthropic.script(Reply.error(500, headers=FAST), Reply(text="second time"))
    reply = await h.router.complete("execute", "standard", REQUEST)
    assert reply.text == "second time"
    calls = await _all_calls(h.store)
    assert len(h.anthropic.requests) == len(calls) == 2
    assert [c.outcome for c in calls] == ["failed:transient", "ok"]


async def test_an_attempt_cut_off_mid_call_is_charged_its_worst_case(harness: Harness) -> None:
    h = harness
    h.anthropic.script(Reply(text="too late", delay=10), Reply(text="recovered"))
    reply = await h.router.complete("execute", "standard", REQUEST, timeout_s=0.5)
    assert reply.text == "recovered"
    cut, ok = await _all_calls(h.store)
    assert cut.outcome == "failed:transient" and cut.cost_micro_usd > 0


async def test_every_model_failing_is_provider_unavailable(harness: Harness) -> None:
    h = harness
    h.anthropic.script(*[Reply.error(500, headers=FAST)] * 3)
    h.openai.script(*[OpenAIReply.error(503, headers=FAST)] * 3)
    with pytest.raises(ProviderUnavailable, match="Anthropic is unavailable"):
        await h.router.complete("execute", "standard", REQUEST)
    assert len(await _all_calls(h.store)) == 6


async def test_a_long_retry_after_defers_instead_of_waiting(harness: Harness) -> None:
    h = harness
    h.anthropic.script(Reply.error(429, retry_after=3600))
    with pytest.raises(RetryLater) as caught:
        async with asyncio.timeout(5):
            await h.router.complete("execute", "standard", REQUEST)
    assert caught.value.after_s == 3600
    assert len(h.anthropic.requests) == 1 and h.openai.requests == []
    [call] = await _all_calls(h.store)
    assert call.outcome == "failed:defer"


async def test_a_short_retry_after_is_retried_by_the_router(harness: Harness) -> None:
    h = harness
    h.anthropic.script(Reply.error(429, retry_after=0.01), Reply(text="after the wait"))
    reply = await h.router.complete("execute", "standard", REQUEST)
    assert reply.text == "after the wait" and len(h.anthropic.requests) == 2


async def test_rate_limits_everywhere_come_back_later(harness: Harness) -> None:
    h = harness
    h.anthropic.script(*[Reply.error(429, retry_after=0.01)] * 3)
    h.openai.script(*[OpenAIReply.error(429, retry_after=0.01)] * 3)
    with pytest.raises(RetryLater):
        await h.router.complete("execute", "standard", REQUEST)


@pytest.mark.parametrize(
    ("status", "phrase"),
    [(400, "rejected the request"), (401, "API key"), (404, "does not know")],
)
async def test_client_errors_are_final_with_a_plain_explanation(
    harness: Harness, status: int, phrase: str
) -> None:
    h = harness
    h.anthropic.script(Reply.error(status))
    with pytest.raises(ProviderRejected, match=phrase):
        await h.router.complete("execute", "standard", REQUEST)
    assert len(h.anthropic.requests) == 1 and h.openai.requests == []
    [call] = await _all_calls(h.store)
    assert call.outcome == "failed:reject"


async def test_an_anthropic_spend_limit_is_not_retried(
    database: Database,
    spend_limited_anthropic: FakeAnthropicSpendLimit,
    fake_openai: FakeOpenAI,
) -> None:
    fake = spend_limited_anthropic
    fake.spend_limited = True
    settings = engine_settings(database, fake, fake_openai)
    store = Store(database.engine())
    router = ModelRouter(
        settings,
        store,
        anthropic=AsyncAnthropic(api_key=fake.api_key, base_url=fake.base_url, max_retries=2),
        openai=None,
    )
    with pytest.raises(ProviderRejected, match="spend limit"):
        await router.complete("execute", "standard", REQUEST)
    assert len(fake.requests) == 1  # not retried by the SDK
    await router.close()
    await store.close()


async def test_openai_out_of_quota_is_not_retried(
    database: Database, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI
) -> None:
    routing = single_route("openai:gpt-5-mini")
    settings = engine_settings(database, fake_anthropic, fake_openai, routing=routing)
    store = Store(database.engine())
    router = ModelRouter.from_settings(settings, store)
    fake_openai.script(OpenAIReply.insufficient_quota(), OpenAIReply(text="never"))
    with pytest.raises(ProviderRejected, match="out of quota"):
        await router.complete("execute", "standard", REQUEST)
    assert len(fake_openai.requests) == 1
    # A local OpenAI-compatible server needs only a base URL.
    local = engine_settings(
        database, fake_anthropic, fake_openai, routing=routing, openai_api_key=None, anthropic_api_key=None
    )
    local_router = ModelRouter.from_settings(local, store)
    assert local_router.configured == {"openai"}
    await router.close()
    await local_router.close()
    await store.close()


async def test_openai_messages_and_tool_calls_round_trip(
    database: Database, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI
) -> None:
    routing = single_route("openai:gpt-5-mini")
    settings = engine_settings(database, fake_anthropic, fake_openai, routing=routing)
    store = Store(database.engine())
    router = ModelRouter(
        settings,
        store,
        anthropic=None,
        openai=AsyncOpenAI(api_key=fake_openai.api_key, base_url=fake_openai.base_url),
    )
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "reading"},
                {"type": "tool_use", "id": "t1", "name": "read_thread", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "boom", "is_error": True},
                {"type": "text", "text": "note from the requester"},
            ],
        },
    ]
    fake_openai.script(OpenAIReply.tool("submit", {"content": "x"}))
    reply = await router.complete(
        "execute",
        "quick",
        ModelRequest(
            system="s",
            messages=history,
            tools=[ToolSpec(name, name, {"type": "object"}) for name in ("read_thread", "submit")],
            tool_choice="submit",
        ),
    )
    await router.close()
    await store.close()
    assert reply.stop_reason == "tool_use" and reply.tool_calls[0].arguments == {"content": "x"}
    wire = fake_openai.last_request
    assert [m["role"] for m in wire["messages"]] == ["system", "user", "assistant", "tool", "user"]
    assert wire["messages"][2]["tool_calls"][0]["function"]["name"] == "read_thread"
    assert wire["messages"][3] == {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"}
    assert wire["tool_choice"] == {"type": "function", "function": {"name": "submit"}}
    assert wire["max_completion_tokens"] == 1024


async def test_the_budget_lowers_max_tokens_to_fit(harness: Harness) -> None:
    h = harness
    order = await h.order(
        budget={"max_usd": 0.05, "max_tokens": 100_000, "max_wall_clock_s": 60, "max_tool_calls": 5}
    )
    guard = BudgetGuard(
        h.store.ledger, h.settings, order_number=int(order.id[3:]), team="default", budget=order.budget  # type: ignore[index]
    )
    big = ModelRequest(system="s", messages=[{"role": "user", "content": "x"}], max_output_tokens=8000)
    h.anthropic.script(Reply(text="ok", usage={"input_tokens": 50, "output_tokens": 5}))
    await h.router.complete("execute", "standard", big, order_id=order.id, budget=guard)
    sent = h.anthropic.last_request["max_tokens"]
    # $0.05 at $15/M output leaves room for ~3,000 output tokens after the input's worst case.
    assert 16 <= sent < 8000
    row = await h.store.orders.get_row(order.id or "")
    assert row.reserved_micro_usd == 0 and row.spent_micro_usd == 50 * 3 + 5 * 15


async def test_a_cancelled_call_is_charged_its_worst_case(harness: Harness) -> None:
    h = harness
    order = await h.order()
    guard = BudgetGuard(
        h.store.ledger, h.settings, order_number=int(order.id[3:]), team="default", budget=order.budget  # type: ignore[index]
    )
    h.anthropic.script(Reply(text="slow", delay=60))
    task = asyncio.create_task(
        h.router.complete("execute", "standard", REQUEST, order_id=order.id, budget=guard)
    )
    # Cancel once the call is on the wire (its worst case reserved), not after a fixed pause.
    await eventually(lambda: len(h.anthropic.requests) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [call] = await llm_calls(h.store, order.id or "")
    assert call.outcome == "interrupted" and call.cost_micro_usd == call.reserved_micro_usd > 0
    row = await h.store.orders.get_row(order.id or "")
    assert row.reserved_micro_usd == 0 and row.spent_micro_usd == call.cost_micro_usd


async def _all_calls(store: Store) -> list[Any]:
    from sqlmodel import col, select

    from workers.models import LlmCall

    async with store.transaction() as s:
        return list((await s.exec(select(LlmCall).order_by(col(LlmCall.id)))).all())
