"""Authority enforcement on tool calls, and tools added by plug-ins."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.anthropic import FakeAnthropic, Reply
from tests.fakes.openai import FakeOpenAI
from tests.support.databases import Database
from tests.support.engine import Harness
from tests.support.settings import POLICIES, engine_settings
from workers.errors import ConfigError
from workers.providers import ToolSpec
from workers.store import Store
from workers.tools import Authority, ToolContext, ToolResult, load_tools, object_schema
from workers.workorder import Status


class EchoTool:
    """A plug-in tool as a team would write it."""

    spec = ToolSpec("echo", "Echo the text back.", object_schema({"text": {"type": "string"}}, ["text"]))
    authority = Authority(summary="repeats its input")

    def describe(self, arguments: dict[str, Any]) -> str:
        return "Echoing"

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        return ToolResult(f"echo: {arguments['text']} ({ctx.order.id})")


def make_tools(settings: Any) -> list[Any]:
    """A factory plug-in returning several tools."""
    shout = EchoTool()
    shout.spec = ToolSpec("shout", "Shout.", EchoTool.spec.input_schema)  # type: ignore[misc]
    return [shout]


NOT_A_TOOL = object()


async def test_a_forbidden_tool_is_refused_and_the_run_goes_on(harness: Harness) -> None:
    h = harness
    order = await h.order()  # policy "default": no web_fetch
    h.anthropic.script(
        Reply.tool("web_fetch", {"url": "https://example.com"}, undeclared_ok=True),
        Reply.tool("submit_deliverable", {"content": "from the thread", "summary": "ok"}),
    )
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "done"
    # The model was never offered web_fetch, and its call came back as an error.
    assert "web_fetch" not in {t["name"] for t in h.anthropic.requests[0]["tools"]}
    [result] = h.anthropic.requests[1]["messages"][-1]["content"]
    assert result["is_error"] and "does not allow web_fetch" in result["content"]
    calls = await h.store.runs.tool_calls(order.id or "")
    assert [(c.name, c.allowed, c.outcome) for c in calls] == [
        ("web_fetch", False, "forbidden"),
        ("submit_deliverable", True, "ok"),
    ]
    row = await h.store.orders.get_row(order.id or "")
    assert row.tool_calls == 1  # refused calls do not use the tool budget


async def test_repeated_forbidden_calls_end_the_run_in_authority_exception(harness: Harness) -> None:
    h = harness
    order = await h.order()
    h.anthropic.script(
        # Neither tool is offered under the "default" policy; the model calls them anyway.
        Reply.tool("web_fetch", {"url": "https://example.com"}, undeclared_ok=True),
        Reply.tool("delete_everything", {}, undeclared_ok=True),
        Reply.tool("web_fetch", {"url": "https://example.org"}, undeclared_ok=True),
        Reply.tool("submit_deliverable", {"content": "never", "summary": "never"}),
    )
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "exception"
    row = await h.store.orders.get_row(order.id or "")
    assert (row.status, row.exception_kind) == (Status.EXCEPTION.value, "authority")
    assert "3 times" in (row.exception_message or "")
    [(oid, kind, message)] = h.reporter.exceptions.values()
    assert (oid, kind) == (order.id, "authority")
    assert h.anthropic.pending == 1  # it never got to submit
    trail = await h.store.audit.audit_trail(order.id or "")
    audit = [e for e in trail if e.kind == "transition"]
    assert audit[-1].data["kind"] == "authority"
    # Every refused call is on record, the one that ended the run too, and so is the reply
    # that made it: the run stopped mid-step, with that step's writes still to make.
    calls = await h.store.runs.tool_calls(order.id or "")
    refused = [("web_fetch", "forbidden"), ("delete_everything", "forbidden"), ("web_fetch", "forbidden")]
    assert [(c.name, c.outcome) for c in calls] == refused
    assert [e.data["name"] for e in trail if e.kind == "tool_call"] == [n for n, _ in refused]
    latest = await h.store.runs.latest_checkpoint(order.id or "")
    assert latest is not None and latest.step == 3


async def test_plugins_from_configuration_and_entry_points(
    database: Database,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dist = tmp_path / "team_tools-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: team-tools\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[delegate.tools]\nshout = tests.test_tools:make_tools\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    policies = {**POLICIES, "team": {"tools": ["echo", "shout", "read_thread"], "domains": []}}
    settings = engine_settings(
        database,
        fake_anthropic,
        fake_openai,
        policies=policies,
        tools={"plugins": ["tests.test_tools:EchoTool"]},
    )
    registry = load_tools(settings)
    assert {"echo", "shout", "web_fetch", "read_thread"} <= set(registry.names)
    offered = {t.spec.name for t in registry.offered(settings.policies["team"])}
    assert offered == {"echo", "shout", "read_thread", "submit_deliverable"}

    store = Store(database.engine())
    h = Harness(settings, store, fake_anthropic, fake_openai, tools=registry)
    order = await h.order(authority_policy="team")
    fake_anthropic.script(
        Reply.tool("echo", {"text": "hello"}),
        Reply.tool("submit_deliverable", {"content": "c", "summary": "s"}),
    )
    outcome = await h.run_next()
    assert outcome is not None and outcome.kind == "done"
    [result] = fake_anthropic.requests[1]["messages"][-1]["content"]
    assert result["content"] == f"echo: hello ({order.id})"
    await h.close()
    await store.close()
    assert "tests.test_tools" in sys.modules


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        ("tests.test_tools:NOT_A_TOOL", "is not a tool"),
        ("tests.test_tools:Missing", "has no 'Missing'"),
        ("no_such_module_xyz:thing", "cannot import"),
        ("just-a-name", "module:attribute"),
        ("tests.test_tools:EchoTool", "clashes"),
    ],
)
def test_bad_plugins_fail_at_start_naming_the_entry(
    plugin: str,
    message: str,
    database: Database,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
) -> None:
    plugins = [plugin, "tests.test_tools:EchoTool"] if "clashes" in message else [plugin]
    settings = engine_settings(database, fake_anthropic, fake_openai, tools={"plugins": plugins})
    with pytest.raises(ConfigError, match=message) as caught:
        load_tools(settings, use_entry_points=False)
    assert "tools.plugins" in str(caught.value)
