"""MCP servers as sources of tools, under the authority policy.

`connection` keeps one server connected and its tools listed, `tool` turns each of its tools into
a Delegate tool, `manager` holds every configured server for the registry, `naming` gives the
tools names providers accept, `content` turns results into capped, scrubbed text, and `origin`
is what the policy decides on (server, tool, trust, annotations).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.tools.mcp.connection import McpCallFailed, McpUnavailable, ServerConnection
    from workers.tools.mcp.manager import McpServers
    from workers.tools.mcp.origin import McpOrigin
    from workers.tools.mcp.tool import McpTool

# The MCP SDK takes about half a second of CPU to import: a process with no MCP server
# configured (most of them, and every CLI command) never loads it. The policy only needs
# `origin`, which imports nothing of the SDK.
_HOMES = {
    "McpCallFailed": "connection",
    "McpUnavailable": "connection",
    "ServerConnection": "connection",
    "McpServers": "manager",
    "McpOrigin": "origin",
    "McpTool": "tool",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)


__all__ = [
    "McpCallFailed",
    "McpOrigin",
    "McpServers",
    "McpTool",
    "McpUnavailable",
    "ServerConnection",
]
