"""MCP tools through the agent with a fake model: what the model is offered, what a forced call
gets, and how a server's crash or hang reaches the run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.anthropic import FakeAnthropic, Reply
from tests.fakes.openai import FakeOpenAI
from tests.support.databases import Database
from tests.support.engine import Harness
from tests.support.mcp import stdio_server
from tests.support.settings import POLICIES, engine_settings
from workers.store import Store

pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)

ANALYTICS = {
    "description": "Read the warehouse.",
    "tools": ["read_thread", "submit_deliverable", "wh.*"],
    "approvals": {"wh.lookup": "allow", "wh.crash": "allow", "wh.hang": "allow", "wh.fail": "deny"},
}
LOOKUP_ONLY = {"description": "One tool.", "tools": ["submit_deliverable", "wh.lookup"]}


@pytest.fixture
async def mcp_harness(
    database: Database, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI, tmp_path: Path
) -> AsyncIterator[Harness]:
    settings = engine_settings(
        database,
        fake_anthropic,
        fake_openai,
        policies={**POLICIES, "analytics": ANALYTICS, "lookup_only": LOOKUP_ONLY},
        mcp_servers={
            "wh": stdio_server(timeout_s=1, env={"MCP_TEST_MARKER": str(tmp_path / "dropped.txt")})
        },
    )
    store = Store(database.engine())
    h = Harness(settings, store, fake_anthropic, fake_openai)
    await h.tools.start()
    yield h
    await h.tools.close()
    await h.close()
    await store.close()


def offered(request: dict[str, Any]) -> set[str]:
    return {tool["name"] for tool in request["tools"]}


def last_result(request: dict[str, Any]) -> dict[str, Any]:
    [result] = [b for b in request["messages"][-1]["content"] if b.get("type") == "tool_result"]
    return result


def text_of(result: dict[str, Any]) -> str:
    content = result["content"]
    return content if isinstance(content, str) else "".join(b.get("text", "") for b in content)


async def test_a_granted_read_only_tool_runs_and_its_result_reaches_the_deliverable(
    mcp_harness: Harness,
) -> None:
    h = mcp_harness
    order = await h.order(authority_policy="analytics")

    def submit(body: dict[str, Any]) -> Reply:
        seen = text_of(last_result(body))
        figure = seen.split("churn in 2026Q3: ")[1].split()[0]
        return Reply.tool(
            "submit_deliverable", {"content": f"Q3 churn was {figure}", "summary": "one figure"}
        )

    h.anthropic.script(Reply.tool("wh__lookup", {"quarter": "2026Q3"}), submit)
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "done"
    first, second = h.anthropic.requests[:2]
    assert {"wh__lookup", "wh__crash", "wh__drop_table"} <= offered(first)
    assert "wh__fail" not in offered(first)  # denied: never offered
    result = last_result(second)
    assert not result.get("is_error")
    assert text_of(result).startswith('<untrusted source="MCP server wh, tool lookup">')
    [deliverable] = await h.store.runs.deliverables(order.id or "")
    assert deliverable.content == "Q3 churn was 3.2%"
    row = await h.store.orders.get_row(order.id or "")
    assert row.tool_calls == 2  # the MCP call and the hand-in both count


async def test_an_ungranted_tool_is_never_offered_and_a_forced_call_is_refused(
    mcp_harness: Harness, tmp_path: Path
) -> None:
    h = mcp_harness
    order = await h.order(authority_policy="lookup_only")
    h.anthropic.script(
        Reply.tool("wh__drop_table", {"table": "churn"}, undeclared_ok=True),
        Reply.tool("submit_deliverable", {"content": "done", "summary": "ok"}),
    )
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "done"
    assert offered(h.anthropic.requests[0]) == {"wh__lookup", "submit_deliverable"}
    result = last_result(h.anthropic.requests[1])
    assert result["is_error"] and "does not allow wh__drop_table" in text_of(result)
    assert not (tmp_path / "dropped.txt").exists()  # the server never saw the call
    calls = await h.store.runs.tool_calls(order.id or "")
    first = calls[0]
    assert (first.name, first.allowed, first.outcome) == ("wh__drop_table", False, "forbidden")


async def test_a_denied_tool_is_refused_and_an_ask_tool_parks_the_run(
    mcp_harness: Harness, tmp_path: Path
) -> None:
    h = mcp_harness
    order = await h.order(authority_policy="analytics")
    h.anthropic.script(
        Reply.tool("wh__fail", {}, undeclared_ok=True),  # denied: not offered
        Reply.tool("wh__drop_table", {"table": "churn"}),  # destructive: approval needed
    )
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "parked"
    denied = last_result(h.anthropic.requests[1])
    assert denied["is_error"] and "denies wh__fail" in text_of(denied)
    [(_, asked)] = h.reporter.approval_requests.values()
    assert (asked.tool, asked.server, asked.arguments) == ("drop_table", "wh", '{"table":"churn"}')
    assert not (tmp_path / "dropped.txt").exists()  # nothing runs before a person allows it
    calls = await h.store.runs.tool_calls(order.id or "")
    assert [(c.name, c.allowed, c.outcome) for c in calls] == [("wh__fail", False, "forbidden")]


async def test_a_server_crashing_mid_call_is_a_tool_error_and_the_run_goes_on(
    mcp_harness: Harness,
) -> None:
    h = mcp_harness
    order = await h.order(authority_policy="analytics")
    h.anthropic.script(
        Reply.tool("wh__crash", {}),
        Reply.tool("wh__lookup", {"quarter": "2026Q1"}),  # the server is started again
        Reply.tool("submit_deliverable", {"content": "done", "summary": "ok"}),
    )
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "done"
    crashed = last_result(h.anthropic.requests[1])
    assert crashed["is_error"] and "unavailable" in text_of(crashed)
    again = last_result(h.anthropic.requests[2])
    assert not again.get("is_error") and "churn in 2026Q1: 4.1%" in text_of(again)
    calls = await h.store.runs.tool_calls(order.id or "")
    assert [(c.name, c.outcome) for c in calls] == [
        ("wh__crash", "error"),
        ("wh__lookup", "ok"),
        ("submit_deliverable", "ok"),
    ]


async def test_a_hang_times_out_as_a_tool_error(mcp_harness: Harness) -> None:
    h = mcp_harness
    await h.order(authority_policy="analytics")
    h.anthropic.script(
        Reply.tool("wh__hang", {}),
        Reply.tool("submit_deliverable", {"content": "done", "summary": "ok"}),
    )
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "done"
    hung = last_result(h.anthropic.requests[1])
    assert hung["is_error"] and "did not answer within 1 s" in text_of(hung)


async def test_arguments_that_do_not_fit_the_schema_never_reach_the_server(
    mcp_harness: Harness,
) -> None:
    h = mcp_harness
    await h.order(authority_policy="analytics")
    h.anthropic.script(
        Reply.tool("wh__lookup", {"quarter": 7}),
        Reply.tool("submit_deliverable", {"content": "done", "summary": "ok"}),
    )
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "done"
    refused = last_result(h.anthropic.requests[1])
    assert refused["is_error"] and "do not match wh__lookup's schema" in text_of(refused)
