"""MCP servers as sources of tools, under the authority policy.

`connection` keeps one server connected and its tools listed, `tool` turns each of its tools into
a Delegate tool, `manager` holds every configured server for the registry, `naming` gives the
tools names providers accept, `content` turns results into capped, scrubbed text, and `origin`
is what the policy decides on (server, tool, trust, annotations).
"""

from __future__ import annotations

from workers.tools.mcp.connection import McpCallFailed, McpUnavailable, ServerConnection
from workers.tools.mcp.manager import McpServers
from workers.tools.mcp.origin import McpOrigin
from workers.tools.mcp.tool import McpTool

__all__ = [
    "McpCallFailed",
    "McpOrigin",
    "McpServers",
    "McpTool",
    "McpUnavailable",
    "ServerConnection",
]
