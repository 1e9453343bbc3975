"""MCP configuration mistakes, tool names, and the approval rule as a pure function."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.support.databases import Database
from tests.support.settings import POLICIES, engine_settings
from workers.config import AuthorityPolicy
from workers.errors import ConfigError
from workers.providers import ToolSpec
from workers.tools import Authority, decision, denial, granted
from workers.tools.mcp.naming import assign, model_name
from workers.tools.mcp.origin import McpOrigin

SQLITE = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


def load(database: Database, fa: FakeAnthropic, fo: FakeOpenAI, **overrides: Any) -> Any:
    return engine_settings(database, fa, fo, **overrides)


@SQLITE
@pytest.mark.parametrize(
    ("servers", "policies", "expected"),
    [
        ({"bad.name": {"url": "http://x/mcp"}}, {}, "a server name is a letter"),
        ({"a__b": {"url": "http://x/mcp"}}, {}, "no '__'"),
        ({"wh": {"command": ["x"], "url": "http://x/mcp"}}, {}, "exactly one of `command`"),
        ({"wh": {}}, {}, "exactly one of `command`"),
        ({"wh": {"command": []}}, {}, "`command` is empty"),
        ({"wh": {"url": "ftp://x"}}, {}, "must be an http(s) URL"),
        ({"wh": {"command": ["x"], "headers": {"A": "b"}}}, {}, "`headers` is for `url`"),
        ({"wh": {"url": "http://x/mcp", "timeout_s": 500}}, {}, "timeout_s"),
        (
            {
                "wh": {
                    "url": "http://x/mcp",
                    "headers": {"Authorization": "Bearer ${NO_SUCH_VAR_X}"},
                }
            },
            {},
            "headers.Authorization refers to ${NO_SUCH_VAR_X}, which is not set",
        ),
        ({}, {"p": {"tools": ["tracker.*"]}}, "names the MCP server 'tracker', which is not"),
        ({"wh": {"url": "http://x/mcp"}}, {"p": {"approvals": {"wh.": "ask"}}}, "names no tool"),
        ({}, {"p": {"approvals": {"submit_deliverable": "deny"}}}, "always allowed"),
        ({}, {"p": {"approvals": {"x": "maybe"}}}, "approvals.x"),
    ],
)
def test_bad_mcp_configuration_is_a_clear_error(
    database: Database,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    servers: dict[str, Any],
    policies: dict[str, Any],
    expected: str,
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(
            database,
            fake_anthropic,
            fake_openai,
            mcp_servers=servers,
            policies={**POLICIES, **policies},
        )
    assert expected in str(caught.value)


@SQLITE
def test_a_mistake_never_prints_a_value_read_from_the_environment(
    database: Database,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MCP_TOKEN_X", "very-secret-token-value")
    with pytest.raises(ConfigError) as caught:
        load(
            database,
            fake_anthropic,
            fake_openai,
            mcp_servers={
                "wh": {"url": "http://x", "headers": {"A": "${MCP_TOKEN_X}"}, "env": {"B": "c"}}
            },
        )
    assert "very-secret-token-value" not in str(caught.value)
    assert "`env` and `cwd` are for `command` servers" in str(caught.value)


@SQLITE
def test_values_read_from_the_environment_are_secrets(
    database: Database,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MCP_TOKEN_Y", "another-secret-value")
    settings = load(
        database,
        fake_anthropic,
        fake_openai,
        mcp_servers={"wh": {"url": "https://x/mcp", "headers": {"A": "Bearer ${MCP_TOKEN_Y}"}}},
        policies={**POLICIES, "p": {"tools": ["wh.*"], "approvals": {"wh.write": "ask"}}},
    )
    assert "another-secret-value" in settings.secret_values()
    assert settings.policies["p"].approvers == ["requester", "escalation"]


def test_tool_names_fit_every_provider_and_stay_the_same() -> None:
    assert model_name("wh", "read_query") == "wh__read_query"
    dotted = model_name("wh", "files.read")
    assert dotted.startswith("wh__files_read_") and dotted == model_name("wh", "files.read")
    long = model_name("wh", "x" * 128)
    assert len(long) <= 64
    # A clash is resolved the same way whatever order the tools are listed in.
    first = assign("wh", ["a.b", "a_b", "c"], {"wh__c"})
    second = assign("wh", ["c", "a_b", "a.b"], {"wh__c"})
    assert first == second
    assert len(set(first.values())) == 3 and "wh__c" not in first.values()


class Fake:
    """A tool as the policy sees it."""

    def __init__(self, name: str, origin: McpOrigin | None = None) -> None:
        self.spec = ToolSpec(name, "", {"type": "object"})
        self.authority = Authority()
        self.origin = origin

    def describe(self, arguments: dict[str, Any]) -> str:
        return ""

    async def run(self, arguments: dict[str, Any], ctx: Any) -> Any:
        raise AssertionError


def mcp(tool: str, **hints: Any) -> Fake:
    return Fake(f"wh__{tool}", McpOrigin("wh", tool, **hints))


@pytest.mark.parametrize(
    ("tool", "approvals", "expected"),
    [
        (Fake("read_thread"), {}, "allow"),
        (Fake("web_fetch"), {"web_fetch": "deny"}, "deny"),
        (mcp("q", read_only=True), {}, "allow"),  # read-only hint, untrusted server
        (mcp("q"), {}, "ask"),  # untrusted and not marked read-only
        (mcp("q", trusted=True), {}, "allow"),
        (mcp("q", trusted=True, destructive=True), {}, "ask"),
        (mcp("q", trusted=True, read_only=True, open_world=True), {}, "ask"),
        (mcp("q", trusted=True, destructive=True), {"wh.q": "allow"}, "allow"),
        (mcp("q"), {"wh.*": "allow"}, "allow"),
        (mcp("q"), {"wh.*": "allow", "wh.q": "deny"}, "deny"),  # exact beats server.*
        (mcp("q", trusted=True, read_only=True), {"wh.*": "ask"}, "ask"),
    ],
)
def test_the_approval_rule(tool: Fake, approvals: dict[str, str], expected: str) -> None:
    policy = AuthorityPolicy(tools=["wh.*"], approvals=approvals)  # type: ignore[arg-type]
    assert decision("p", policy, tool) == expected  # type: ignore[arg-type]


def test_grants_by_exact_name_or_server_wildcard_and_nothing_by_default() -> None:
    lookup, drop = mcp("lookup", read_only=True), mcp("drop")
    assert not granted("wh__lookup", AuthorityPolicy(), lookup)  # type: ignore[arg-type]
    exact = AuthorityPolicy(tools=["wh.lookup"])
    assert granted("wh__lookup", exact, lookup)  # type: ignore[arg-type]
    assert not granted("wh__drop", exact, drop)  # type: ignore[arg-type]
    assert granted("wh__drop", AuthorityPolicy(tools=["wh.*"]), drop)  # type: ignore[arg-type]
    # The model-facing name is not a grant.
    assert not granted("wh__lookup", AuthorityPolicy(tools=["wh__lookup"]), lookup)  # type: ignore[arg-type]
    reason = denial("wh__drop", drop, policy_name="p", policy=exact)  # type: ignore[arg-type]
    assert reason is not None and "does not allow wh__drop" in reason


@SQLITE
async def test_doctor_lists_each_servers_tools_and_the_policies_granting_them(
    database: Database, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI
) -> None:
    from bot.doctor import check_mcp_servers, render
    from tests.support.mcp import stdio_server

    settings = load(
        database,
        fake_anthropic,
        fake_openai,
        mcp_servers={"wh": stdio_server(), "gone": {"command": ["/nonexistent/mcp-server"]}},
        policies={
            **POLICIES,
            "analytics": {"tools": ["wh.*"], "approvals": {"wh.fail": "deny"}},
            "narrow": {"tools": ["wh.lookup"]},
        },
    )
    checks = {c.name: c for c in await check_mcp_servers(settings)}
    wh = checks["MCP server wh"]
    assert wh.ok and "not trusted" in wh.detail
    assert "wh.lookup [readOnlyHint]: analytics (allow), narrow (allow)" in wh.detail
    assert "wh.drop_table [destructiveHint]: analytics (ask)" in wh.detail
    assert "wh.fail: analytics (deny)" in wh.detail
    gone = checks["MCP server gone"]
    assert not gone.ok and "could not connect" in gone.detail
    assert '"name": "MCP server gone"' in render(list(checks.values()), format="json")
