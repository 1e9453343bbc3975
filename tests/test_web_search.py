"""web_search end to end (fake Slack, fake Anthropic): the provider's own search is offered only
to a run whose policy grants it, kept to the policy's domains, each search counted as a tool call
and charged to the order's budget at its configured price; searches the budget cannot cover are
not allowed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes.anthropic import Reply, Search, ToolUse
from tests.fakes.openai import Reply as OpenAIReply
from tests.support.pipeline import Pipeline, PipelineFactory, verdicts
from tests.support.records import llm_calls
from workers.workorder import Status

pytestmark = pytest.mark.front_door  # SQLite only: tests/support/databases.py

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
async def pipe(pipeline: PipelineFactory) -> AsyncIterator[Pipeline]:
    async with pipeline(
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
    calls = await pipe.bot.store.runs.tool_calls(order_id)
    assert [(c.name, c.arguments) for c in calls if c.name == "web_search"] == [
        ("web_search", {"query": "acme pricing"})
    ]
    assert (await pipe.bot.store.orders.get_row(order_id)).tool_calls == 2  # the search and the hand-in
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
    assert [c.name for c in await pipe.bot.store.runs.tool_calls(order_id)].count("web_search") == 2


OPENAI_ROUTE = {"primary": "openai:gpt-5-mini", "fallback": None}
ANYWHERE = {
    "anywhere": {"tools": ["read_thread", "submit_deliverable", "web_search"], "domains": ["*"]},
    **POLICIES,
}


@pytest.fixture
async def openai_pipe(pipeline: PipelineFactory) -> AsyncIterator[Pipeline]:
    """Runs on OpenAI's Chat Completions, whose search takes no domain list."""
    async with pipeline(
        policies=ANYWHERE,
        channels={"default": {"policy": "default", "allowed_policies": ["research", "anywhere"]}},
        routing={"execute": {k: OPENAI_ROUTE for k in ("quick", "standard", "deep")}},
        tool_settings={"web_search": {"max_uses": 3, "price_per_1000_usd": {"openai": 2000.0}}},
    ) as p:
        yield p


def _searching(body: dict[str, Any]) -> bool:
    return "web_search_options" in body


async def test_openai_offers_no_search_to_a_policy_with_a_domain_list(
    openai_pipe: Pipeline,
) -> None:
    """Chat Completions cannot keep a search to a list of domains: a policy that lists them
    gets no search on this provider at all."""
    pipe = openai_pipe
    submit = OpenAIReply.tool("submit_deliverable", {"content": "Acme: $10", "summary": "Done."})
    pipe.openai.script(submit, verdicts(True, True, True))
    order_id = await pipe.order_started(authority_policy="research", budget={"max_usd": 10.0})
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    [execute] = [r for r in pipe.openai.requests if "submit_deliverable" in str(r.get("tools"))]
    assert not _searching(execute)
    assert all(t["function"]["name"] != "web_search" for t in execute.get("tools") or [])
    assert [c.name for c in await pipe.bot.store.runs.tool_calls(order_id)] == ["submit_deliverable"]


async def test_openai_searches_where_any_domain_may_be_read_and_charges_the_call(
    openai_pipe: Pipeline,
) -> None:
    """A policy that may read anywhere gets the search model's search: the searching call is a
    tool call on the record (with the pages it cited) and is charged at the configured price."""
    pipe = openai_pipe
    cited = OpenAIReply.tool(
        "submit_deliverable",
        {"content": "Acme: $10 (acme.example.com/pricing)", "summary": "Done."},
        citations=["https://acme.example.com/pricing"],
    )
    pipe.openai.script(cited, verdicts(True, True, True))
    order_id = await pipe.order_started(authority_policy="anywhere", budget={"max_usd": 10.0})
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    searched = [r for r in pipe.openai.requests if _searching(r)]
    assert len(searched) == 1 and searched[0]["web_search_options"] == {}
    calls = await pipe.bot.store.runs.tool_calls(order_id)
    [search] = [c for c in calls if c.name == "web_search"]
    assert "acme.example.com/pricing" in str(search.arguments)
    [call] = [c for c in await llm_calls(pipe.bot.store, order_id) if c.role == "execute"]
    assert 2_000_000 < call.cost_micro_usd < 2_100_000  # one $2 search on top of the tokens
