"""MCP servers as tool sources, against real servers: the SDK-built test server over stdio and
Streamable HTTP, a hand-written server on protocol 2024-11-05, and the published mcp-server-time."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.mcp import http_server_url, legacy_server, stdio_server, time_server
from tests.support.waiting import eventually
from workers import telemetry
from workers.config import McpServerSettings
from workers.tools import ToolInputError
from workers.tools.mcp import McpServers, McpTool

__all__ = ["http_server_url"]  # the module-scoped fixture


def servers(**entries: dict[str, Any]) -> McpServers:
    configured = {name: McpServerSettings(**entry) for name, entry in entries.items()}
    settings = SimpleNamespace(
        mcp_servers=configured,
        secret_values=lambda: [s for c in configured.values() for s in c.secrets],
    )
    return McpServers(settings)  # type: ignore[arg-type]


def ctx(remaining_s: float | None = 60.0) -> Any:
    return SimpleNamespace(remaining_s=remaining_s)


def by_name(source: McpServers) -> dict[str, McpTool]:
    return {tool.spec.name: tool for tool in source.tools()}


async def test_stdio_server_tools_are_offered_validated_called_and_fenced(tmp_path: Path) -> None:
    marker = tmp_path / "dropped.txt"
    source = servers(wh=stdio_server(env={"MCP_TEST_MARKER": str(marker)}))
    await source.start()
    try:
        tools = by_name(source)
        assert {"wh__lookup", "wh__drop_table", "wh__hang"} <= set(tools)
        lookup = tools["wh__lookup"]
        assert lookup.grant_name == "wh.lookup"
        assert lookup.spec.input_schema["properties"]["quarter"]["type"] == "string"
        assert lookup.origin.read_only is True and lookup.origin.open_world is False
        assert lookup.authority.side_effects  # read-only is believed only on a trusted server
        result = await lookup.run({"quarter": "2026Q3"}, ctx())
        assert not result.is_error
        assert result.content == "churn in 2026Q3: 3.2%"
        assert result.untrusted_source == "MCP server wh, tool lookup"

        # Arguments that do not fit the schema never leave: the destructive tool did not run.
        with pytest.raises(ToolInputError, match="table"):
            await tools["wh__drop_table"].run({"table": 42}, ctx())
        with pytest.raises(ToolInputError, match="required"):
            await tools["wh__drop_table"].run({}, ctx())
        assert not marker.exists()
        assert not (await tools["wh__drop_table"].run({"table": "churn"}, ctx())).is_error
        assert marker.read_text() == "dropped churn\n"
    finally:
        await source.close()


async def test_a_trusted_servers_read_only_tool_has_no_side_effects() -> None:
    source = servers(wh=stdio_server(trusted=True))
    await source.start()
    try:
        tools = by_name(source)
        assert not tools["wh__lookup"].authority.side_effects
        assert tools["wh__drop_table"].authority.side_effects
    finally:
        await source.close()


async def test_the_list_is_taken_again_when_the_server_says_it_changed(
    http_server_url: str,
) -> None:
    for transport in (stdio_server(), {"url": http_server_url}):
        source = servers(wh=transport)
        await source.start()
        try:
            tools = by_name(source)
            name = f"n{len(transport)}"
            assert f"wh__extra_{name}" not in tools
            await tools["wh__add_tool"].run({"name": name}, ctx())
            await eventually(lambda n=name, s=source: f"wh__extra_{n}" in by_name(s))
            result = await by_name(source)[f"wh__extra_{name}"].run({}, ctx())
            assert result.content == f"extra {name}"
        finally:
            await source.close()


async def test_streamable_http_with_headers_from_the_environment(
    http_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_TEST_TOKEN", "token-from-the-environment-123")
    source = servers(
        remote={"url": http_server_url, "headers": {"Authorization": "Bearer ${MCP_TEST_TOKEN}"}}
    )
    assert source.connections["remote"].settings.headers == {
        "Authorization": "Bearer token-from-the-environment-123"
    }
    await source.start()
    try:
        result = await by_name(source)["remote__lookup"].run({"quarter": "2026Q1"}, ctx())
        assert result.content == "churn in 2026Q1: 4.1%"
    finally:
        await source.close()


async def test_a_server_on_an_older_protocol_version_works() -> None:
    """2024-11-05: initialize handshake, two pages of tools, list_changed notifications, and a
    line of noise on stdout that is not MCP."""
    source = servers(old=legacy_server())
    await source.start()
    try:
        assert source.connections["old"].protocol_version == "2024-11-05"
        tools = by_name(source)
        assert set(tools) == {"old__lookup", "old__grow", "old__garble"}  # both pages
        result = await tools["old__lookup"].run({"quarter": "Q3"}, ctx())
        assert result.content == "legacy churn in Q3: 3.2%"
        await tools["old__grow"].run({}, ctx())
        await eventually(lambda: "old__grown3" in by_name(source))
        result = await tools["old__garble"].run({}, ctx())
        assert not result.is_error and result.content == "after the noise"
    finally:
        await source.close()


async def test_a_crash_is_a_tool_error_and_the_next_call_starts_the_server_again() -> None:
    source = servers(wh=stdio_server())
    await source.start()
    try:
        tools = by_name(source)
        result = await tools["wh__crash"].run({}, ctx())
        assert result.is_error and "unavailable" in result.content
        assert set(by_name(source)) == set(tools)  # still offered while it is down
        result = await tools["wh__lookup"].run({"quarter": "2026Q2"}, ctx())
        assert not result.is_error and result.content == "churn in 2026Q2: 3.7%"
    finally:
        await source.close()


async def test_a_hang_times_out_within_the_orders_remaining_wall_clock(
    http_server_url: str,
) -> None:
    source = servers(wh={"url": http_server_url, "timeout_s": 30})
    await source.start()
    try:
        tools = by_name(source)
        result = await tools["wh__hang"].run({}, ctx(remaining_s=0.3))
        assert result.is_error and "did not answer within 0.3 s" in result.content
        # The server is still usable.
        assert not (await tools["wh__lookup"].run({"quarter": "2026Q1"}, ctx())).is_error
    finally:
        await source.close()


async def test_results_are_scrubbed_capped_described_and_errors_fenced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MCP_TEST_SECRET", "the-servers-own-secret-42")
    source = servers(
        wh=stdio_server(env={"MCP_TEST_SECRET": "${MCP_TEST_SECRET}"}, max_result_chars=500)
    )
    await source.start()
    try:
        tools = by_name(source)
        leak = await tools["wh__leak"].run({"repeat": 5_000}, ctx())
        assert "the-servers-own-secret-42" not in leak.content
        assert leak.content.startswith("token=[redacted] xxx")
        assert (
            len(leak.content) <= 500
            and "[truncated: the result was 5,017 characters" in leak.content
        )
        picture = await tools["wh__picture"].run({}, ctx())
        assert picture.content == (
            "[image: image/png, 9 bytes, not shown]\n\n"
            "[resource link: report.csv <file:///report.csv>]"
        )
        failed = await tools["wh__fail"].run({}, ctx())
        assert failed.is_error and failed.untrusted_source == "MCP server wh, tool fail"
    finally:
        await source.close()


async def test_a_server_that_cannot_start_offers_nothing_and_breaks_nothing() -> None:
    source = servers(
        gone={"command": [str(Path(sys.executable).parent / "no-such-mcp-server")]},
        wh=stdio_server(),
    )
    await source.start()
    try:
        assert source.connections["gone"].last_error
        assert "wh__lookup" in by_name(source)
        assert not any(name.startswith("gone__") for name in by_name(source))
    finally:
        await source.close()


async def test_the_published_time_server_from_pypi() -> None:
    source = servers(clock=time_server(trusted=True))
    await source.start()
    try:
        tools = by_name(source)
        assert {"clock__get_current_time", "clock__convert_time"} <= set(tools)
        now = tools["clock__get_current_time"]
        assert now.origin.read_only is True and not now.authority.side_effects
        result = await now.run({"timezone": "UTC"}, ctx())
        assert not result.is_error and '"timezone": "UTC"' in result.content
        with pytest.raises(ToolInputError):
            await tools["clock__convert_time"].run({"time": "12:00"}, ctx())
    finally:
        await source.close()


async def test_calls_errors_and_latency_are_counted_per_server_and_tool(
    http_server_url: str,
) -> None:
    def sample(name: str, **labels: str) -> float:
        return telemetry.REGISTRY.get_sample_value(name, labels) or 0.0

    calls = sample("delegate_mcp_tool_calls_total", server="metered", tool="lookup")
    errors = sample(
        "delegate_mcp_tool_errors_total", server="metered", tool="fail", kind="tool_error"
    )
    source = servers(metered={"url": http_server_url})
    await source.start()
    try:
        tools = by_name(source)
        await tools["metered__lookup"].run({"quarter": "2026Q1"}, ctx())
        await tools["metered__fail"].run({}, ctx())
    finally:
        await source.close()
    assert sample("delegate_mcp_tool_calls_total", server="metered", tool="lookup") == calls + 1
    assert (
        sample("delegate_mcp_tool_errors_total", server="metered", tool="fail", kind="tool_error")
        == errors + 1
    )
    assert (
        sample("delegate_mcp_tool_call_duration_seconds_count", server="metered", tool="lookup")
        >= 1
    )
