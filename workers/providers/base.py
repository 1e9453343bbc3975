"""The provider-neutral request and reply shapes, and the interface each provider implements.

Messages use an Anthropic-shaped neutral format::

    {"role": "user" | "assistant",
     "content": str | [{"type": "text", "text": ...}
                       | {"type": "tool_use", "id": ..., "name": ..., "input": {...}}
                       | {"type": "tool_result", "tool_use_id": ..., "content": str,
                          "is_error": bool}]}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

StopReason = Literal["end_turn", "tool_use", "max_tokens", "refusal"]


@dataclass(frozen=True)
class ToolSpec:
    """A tool as the model sees it."""

    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class WebSearchRequest:
    """The provider's own web search offered in a call (the `web_search` tool)."""

    max_uses: int
    allowed_domains: list[str] | None = None
    """None: any domain (the policy grants '*')."""


@dataclass
class ModelRequest:
    system: str
    messages: list[dict[str, Any]]
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: str | None = None
    """Force this tool by name."""
    max_output_tokens: int = 1024
    cache_prefix: bool = True
    """Mark the stable prefix (tools, system prompt) and the conversation so far for caching."""
    web_search: WebSearchRequest | None = None


@dataclass
class ToolUse:
    id: str
    name: str
    arguments: dict[str, Any] | None
    raw_arguments: str
    error: str | None = None
    """Set when the model's arguments were not a valid JSON object."""


@dataclass
class Usage:
    input_tokens: int = 0
    """Input tokens billed at the plain input rate (not read from or written to the cache)."""
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    web_search_requests: int = 0
    """Searches the provider ran in the call (billed per search, not per token)."""

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_write_tokens
            + self.cache_read_tokens
        )

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_write_tokens + self.cache_read_tokens


@dataclass
class ModelReply:
    text: str
    tool_calls: list[ToolUse]
    stop_reason: StopReason
    usage: Usage
    provider: str
    model: str
    latency_ms: int
    server_blocks: list[dict[str, Any]] = field(default_factory=list)
    """What the provider's own tools did in the call (web searches and their results), in the
    neutral (Anthropic) shape, kept in the history so later turns see them."""
    searches: list[str] = field(default_factory=list)
    """The queries of the searches the provider ran, for the record of tool calls."""


FailureKind = Literal["transient", "defer", "reject"]


class ProviderFailure(Exception):
    """A provider call failed after the SDK's own retries; `kind` says what the router does next.

    transient: try the fallback model. defer: come back after `after_s`. reject: stop with the
    plain `explanation`. `billed` is "none" when the provider cannot have charged for the call,
    "unknown" when it may have (timeouts, dropped connections): then the worst case is charged.
    """

    def __init__(
        self,
        kind: FailureKind,
        explanation: str,
        *,
        after_s: float | None = None,
        billed: Literal["none", "unknown"] = "none",
        status: int | None = None,
    ) -> None:
        super().__init__(explanation)
        self.kind = kind
        self.explanation = explanation
        self.after_s = after_s
        self.billed = billed
        self.status = status


class ProviderClient(Protocol):
    """One provider's Messages-style API behind the neutral shapes."""

    name: str

    async def complete(
        self, model: str, request: ModelRequest, *, max_output_tokens: int, timeout_s: float
    ) -> ModelReply:
        """One call, with the SDK's retries; raises ProviderFailure when it gives up."""
        ...


def retry_after_s(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds form), as the SDKs read them."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) * scale
        except (TypeError, ValueError):
            continue
    return None
