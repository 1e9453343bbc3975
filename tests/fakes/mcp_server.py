"""A real MCP server, built with the `mcp` SDK, for the MCP tool tests.

Run as `python -m tests.fakes.mcp_server stdio` (a subprocess speaking stdio) or
`python -m tests.fakes.mcp_server http PORT` (Streamable HTTP on 127.0.0.1:PORT/mcp). Its tools:

- `lookup` (read-only): the churn figure of a quarter.
- `drop_table` (destructive): says it dropped a table; writes a marker file when MCP_TEST_MARKER
  is set, so a test can tell whether it ran.
- `add_tool` (not annotated): registers a new tool `extra_<name>` and says the list changed.
- `crash`: kills the server process mid-call.
- `hang`: never answers.
- `leak`: returns MCP_TEST_SECRET (the tests check that it is scrubbed) and a long text.
- `picture`: an image and a resource link, no text.
- `fail`: a tool error (isError).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ImageContent, ResourceLink, TextContent, ToolAnnotations

server = MCPServer("delegate-test")

CHURN = {"2026Q1": "4.1%", "2026Q2": "3.7%", "2026Q3": "3.2%"}


@server.tool(annotations=ToolAnnotations(readOnlyHint=True, openWorldHint=False))
def lookup(quarter: str) -> str:
    """The churn rate of a quarter such as 2026Q3."""
    return f"churn in {quarter}: {CHURN.get(quarter, 'unknown')}"


@server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True))
def drop_table(table: str) -> str:
    """Drop a table."""
    marker = os.environ.get("MCP_TEST_MARKER")
    if marker:
        with Path(marker).open("a") as f:
            f.write(f"dropped {table}\n")
    return f"dropped {table}"


@server.tool()
async def add_tool(name: str, ctx: Context) -> str:
    """Add a tool called extra_<name>."""

    def extra() -> str:
        return f"extra {name}"

    server.add_tool(extra, name=f"extra_{name}", description=f"The extra tool {name}.")
    await ctx.notify_tools_changed()  # 2026-07-28 connections: subscriptions/listen
    try:  # earlier protocol versions: notifications/tools/list_changed
        await ctx.request_context.session.send_tool_list_changed()
    except Exception:
        pass
    return f"added extra_{name}"


@server.tool()
def crash() -> str:
    """Kill the server."""
    os._exit(3)


@server.tool()
async def hang() -> str:
    """Never answer."""
    await asyncio.sleep(3600)
    return "woke up"


@server.tool()
def leak(repeat: int = 0) -> str:
    """Text with a secret in it, then `repeat` more characters."""
    return f"token={os.environ.get('MCP_TEST_SECRET', '')} " + "x" * repeat


@server.tool()
def picture() -> list[ImageContent | ResourceLink]:
    """An image and a link."""
    return [
        ImageContent(type="image", data="iVBORw0KGgo=", mime_type="image/png"),
        ResourceLink(type="resource_link", uri="file:///report.csv", name="report.csv"),
    ]


@server.tool()
def fail() -> list[TextContent]:
    """Always fails."""
    raise ValueError("the warehouse is closed")


def main() -> None:
    transport = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    if transport == "stdio":
        server.run("stdio")
    else:
        import uvicorn

        port = int(sys.argv[2])
        app = server.streamable_http_app()
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
