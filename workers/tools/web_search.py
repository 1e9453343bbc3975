"""web_search: the model provider's own web search, granted like any tool.

The search runs at the provider, inside the model call (Anthropic's web search server tool;
OpenAI's search on Chat Completions), so this tool is never run here: the agent passes it to
the router as `ModelRequest.web_search`, restricted to the policy's domains where the provider
can restrict it. The router reserves the searches a call may make before it and charges those
made after it, at `tools.web_search.price_per_1000_usd`; the agent counts each as a tool call.
"""

from __future__ import annotations

from typing import Any

from workers.providers.base import ToolSpec
from workers.tools.base import Authority, ToolContext, ToolResult, object_schema


class WebSearch:
    spec = ToolSpec(
        name="web_search",
        description=(
            "Search the web. The search runs at the model provider and is limited to the "
            "order's web domains; every search costs budget."
        ),
        input_schema=object_schema({"query": {"type": "string"}}, ["query"]),
    )
    # `network`: only offered when the policy grants web domains, which restrict the search.
    authority = Authority(network=True, summary="searches the web through the model provider")
    server_side = True
    """Run by the model provider, not by the agent."""

    def describe(self, arguments: dict[str, Any]) -> str:
        return "Searching the web"

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        # Only reached when a provider without server-side search returns it as a call.
        return ToolResult(
            "web_search runs at the model provider and is not available on this model.",
            is_error=True,
        )


def is_server_side(tool: object) -> bool:
    return getattr(tool, "server_side", False) is True
