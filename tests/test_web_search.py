"""web_search end to end (fake Slack, fake Anthropic): the provider's own search is offered only
to a run whose policy grants it, kept to the policy's domains, each search counted as a tool call
and charged to the order's budget at its configured price; searches the budget cannot cover are
not allowed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.fakes.anthropic import FakeAnthropic, Reply, Search, ToolUse
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack
from tests.support.pipeline import Pipeline, pipeline_for, verdicts
from tests.support.records import llm_calls
from workers.workorder import Status

PAGES = [("Acme pricing", "https://acme.example.com/pricing"), ("Elsewhere", "https://evil.test/")]
POLICIES = {
    "research": {
        "tools": ["read_thread", "submit_deliverable", "web_search"],
        "domains": ["example.com"],
    },
    "default": {"tools": ["read_thread", "submit_deliverable"], "domains": []},
}
SUBMIT = ToolUse("submit_deliverable", {"content": "Acme: $10", "summary": "Done."})


def web_search_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    return next((t for t in body.get("tools") or [] if t.get("name") == "web_search"), None)


@pytest.fixture
async def pipe(
    store: Any,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    settings_factory: Callable[..., Any],
) -> AsyncIterator[Pipeline]:
    async with pipeline_for(
        store,
        fake_slack,
        fake_anthropic,
        fake_openai,
        settings_factory,
        policies=POLICIES,
        # $2 a search, so that a search's price is plain in the order's spend.
        tool_settings={"web_search": {"max_uses": 3, "price_per_1000_usd": {"anthropic": 2000.0}}},
    ) as p:
        yield p


async def test_granted_search_is_kept_to_the_domains_counted_and_charged(pipe: Pipeline) -> None:
    pipe.openai.script(verdicts(True, True, True))
    order_id = await pipe.order_started(
        Reply(searches=[Search("acme pricing", PAGES)], tool_uses=[SUBMIT]),
        budget={"max_usd": 10.0},
    )
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)

    [execute] = [r for r in pipe.anthropic.requests if web_search_tool(r)]
    tool = web_search_tool(execute)
    assert tool == {
        "type": "web_search_20250305",
        "name": "web_search",
        "max_uses": 3,
        "allowed_domains": ["example.com"],
    }
    # The search is a tool call of the order's, on the record.
    calls = await pipe.bot.store.tool_calls(order_id)
    assert [(c.name, c.arguments) for c in calls if c.name == "web_search"] == [
        ("web_search", {"query": "acme pricing"})
    ]
    assert (await pipe.bot.store.get_row(order_id)).tool_calls == 2  # the search and the hand-in
    # Charged at its price on top of the tokens.
    [call] = [c for c in await llm_calls(pipe.bot.store, order_id) if c.role == "execute"]
    tokens = call.cost_micro_usd - 2_000_000
    assert 0 < tokens < 100_000


async def test_search_is_not_offered_without_the_grant(pipe: Pipeline) -> None:
    pipe.openai.script(verdicts(True, True, True))
    order_id = await pipe.order_started(Reply(tool_uses=[SUBMIT]), authority_policy="default")
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    execute = pipe.anthropic.requests[-1]
    assert web_search_tool(execute) is None
    assert all(t.get("name") != "web_search" for t in execute.get("tools") or [])


async def test_searches_beyond_the_budget_are_refused(pipe: Pipeline) -> None:
    pipe.openai.script(verdicts(True, True, True))
    # $3 covers the tokens and one $2 search, not two.
    order_id = await pipe.order_started(
        Reply(
            searches=[Search("acme pricing", PAGES), Search("globex pricing", PAGES)],
            tool_uses=[SUBMIT],
        ),
        budget={"max_usd": 3.0},
    )
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    [execute] = [r for r in pipe.anthropic.requests if web_search_tool(r)]
    assert web_search_tool(execute)["max_uses"] == 1  # type: ignore[index]
    [call] = [c for c in await llm_calls(pipe.bot.store, order_id) if c.role == "execute"]
    assert 2_000_000 < call.cost_micro_usd < 3_000_000  # one search charged
    assert [c.name for c in await pipe.bot.store.tool_calls(order_id)].count("web_search") == 2
