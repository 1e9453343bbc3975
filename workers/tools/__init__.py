"""Tools a run may call, and the authority each one needs.

`base` defines the interface (a Tool declares its `Authority`), `policy` enforces the order's
authority policy on every call, `builtin` and `web` are the built-in tools, `mcp` makes the tools
of the configured MCP servers available, and `registry` adds plug-ins from the `delegate.tools`
entry point group and the `tools.plugins` configuration.
"""

from __future__ import annotations

from workers.tools.base import (
    Authority,
    Tool,
    ToolContext,
    ToolForbidden,
    ToolInputError,
    ToolResult,
    object_schema,
    require_str,
)
from workers.tools.policy import decision, denial, granted, host_allowed
from workers.tools.registry import (
    ENTRY_POINT_GROUP,
    ToolRegistry,
    ToolSource,
    builtin_tools,
    load_tools,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Authority",
    "Tool",
    "ToolContext",
    "ToolForbidden",
    "ToolInputError",
    "ToolRegistry",
    "ToolResult",
    "ToolSource",
    "builtin_tools",
    "decision",
    "denial",
    "granted",
    "host_allowed",
    "load_tools",
    "object_schema",
    "require_str",
]
