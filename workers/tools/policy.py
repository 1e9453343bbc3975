"""Authority enforcement: checked in code on every call, whatever the model says.

A tool is granted when the policy lists it by name (an MCP tool: `server.tool` or `server.*`);
`decision` then says whether a granted call may go ahead, must be approved first, or is denied.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from workers.config import AuthorityPolicy
from workers.tools.base import Tool
from workers.tools.mcp.origin import McpOrigin

# A run must always be able to hand in its work.
ALWAYS_GRANTED = frozenset({"submit_deliverable"})

Decision = Literal["allow", "ask", "deny"]


def origin(tool: Tool | None) -> McpOrigin | None:
    """The MCP server a tool comes from, or None for a built-in or plug-in tool."""
    found = getattr(tool, "origin", None)
    return found if isinstance(found, McpOrigin) else None


def grant_keys(name: str, tool: Tool | None) -> tuple[str, ...]:
    """The policy entries that cover this tool, most specific first."""
    mcp = origin(tool)
    if mcp is None:
        return (name,)
    return (mcp.grant_name, mcp.wildcard)


def granted(name: str, policy: AuthorityPolicy, tool: Tool | None = None) -> bool:
    if name in ALWAYS_GRANTED:
        return True
    return any(key in policy.tools for key in grant_keys(name, tool))


def decision(policy_name: str, policy: AuthorityPolicy, tool: Tool) -> Decision:
    """Whether a call to this (granted) tool may go ahead under the policy.

    The policy's own entry wins (the exact tool before `server.*`). Otherwise an MCP server's
    annotations pick the default, as hints: on a server not marked trusted, a tool not marked
    read-only needs approval; a destructive or open-world tool needs approval on any server.
    Every other tool is allowed.
    """
    for key in grant_keys(tool.spec.name, tool):
        if key in policy.approvals:
            return policy.approvals[key]
    mcp = origin(tool)
    if mcp is None:
        return "allow"
    if (mcp.destructive is True and mcp.read_only is not True) or mcp.open_world is True:
        return "ask"
    if not mcp.trusted and mcp.read_only is not True:
        return "ask"
    return "allow"


def denial(
    name: str, tool: Tool | None, *, policy_name: str, policy: AuthorityPolicy
) -> str | None:
    """Why the policy forbids this call, or None if it may go ahead (perhaps only once a person
    allows it: `decision` says `ask`, and the agent asks)."""
    if tool is None:
        return f"there is no tool called {name!r}"
    if not granted(name, policy, tool):
        allowed = ", ".join(sorted(set(policy.tools) | ALWAYS_GRANTED))
        return (
            f"the '{policy_name}' authority policy does not allow {name}; "
            f"the tools this order may use are: {allowed}"
        )
    if tool.authority.network and not policy.domains:
        return f"the '{policy_name}' authority policy grants no web domains"
    verdict = decision(policy_name, policy, tool)
    if verdict == "deny":
        return f"the '{policy_name}' authority policy denies {_shown(name, tool)}"
    return None


def why_ask(policy_name: str, policy: AuthorityPolicy, tool: Tool) -> str:
    """Why `decision` says `ask` for this tool, in words for the approval prompt."""
    for key in grant_keys(tool.spec.name, tool):
        if policy.approvals.get(key) == "ask":
            return f"the '{policy_name}' authority policy asks first for {key}"
    mcp = origin(tool)
    if mcp is not None and mcp.destructive is True and mcp.read_only is not True:
        return "its server marks it destructive"
    if mcp is not None and mcp.open_world is True:
        return "its server marks it as reaching outside systems"
    return "its server is not trusted and does not mark it read-only"


def _shown(name: str, tool: Tool) -> str:
    mcp = origin(tool)
    return f"{name} ({mcp.grant_name} on an MCP server)" if mcp else name


def host_allowed(host: str, policy: AuthorityPolicy) -> bool:
    """Whether the policy's domain list covers `host` (an entry covers its subdomains too).

    "*" covers every host; an IP address is only covered by "*" or by itself.
    """
    host = host.lower().rstrip(".")
    try:
        ipaddress.ip_address(host.strip("[]"))
        is_ip = True
    except ValueError:
        is_ip = False
    for entry in policy.domains:
        entry = entry.lower().strip().rstrip(".")
        if entry == "*":
            return True
        if is_ip:
            if entry.strip("[]") == host.strip("[]"):
                return True
            continue
        entry = entry.removeprefix("*.")
        if host == entry or host.endswith("." + entry):
            return True
    return False
