"""Anthropic Messages API behind the neutral provider interface, with prompt caching."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import anthropic
from anthropic import APIRequest, AsyncAnthropic, AsyncAPIResponse, AsyncCallNext, Middleware

from workers.providers.base import (
    ModelReply,
    ModelRequest,
    ProviderFailure,
    StopReason,
    ToolUse,
    Usage,
    retry_after_s,
)

_STOP_REASONS: dict[str, StopReason] = {
    "end_turn": "end_turn",
    "stop_sequence": "end_turn",
    "pause_turn": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "model_context_window_exceeded": "max_tokens",
    "refusal": "refusal",
}

# 429s that are about money, not rate: retrying cannot help.
SPEND_LIMIT_CODES = frozenset(
    {
        "enforced_spend_limit_reached",
        "contract_spend_limit_reached",
        "linked_organization_spend_limit_reached",
    }
)
_CACHE = {"type": "ephemeral"}
WEB_SEARCH_TOOL = "web_search_20250305"


class _Halt(Exception):
    """Raised by the middleware to stop the SDK's retry loop (it propagates as-is)."""

    def __init__(self, failure: ProviderFailure) -> None:
        super().__init__(failure.explanation)
        self.failure = failure


class RetryPolicy(Middleware):
    """Client middleware: a 429 the SDK must not sit out inline stops its retry loop.

    A spend-limit 429 is final; a 429 whose Retry-After exceeds `inline_retry_after_s` defers the
    run instead of holding a worker slot while the SDK sleeps (it would honour any length).
    """

    def __init__(self, inline_retry_after_s: float) -> None:
        self.inline_retry_after_s = inline_retry_after_s

    async def handle_async(
        self, request: APIRequest, call_next: AsyncCallNext
    ) -> AsyncAPIResponse[Any]:
        response = await call_next(request)
        if response.status_code != 429:
            return response
        body: Any = None
        try:
            body = await response.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        details = error.get("details") if isinstance(error, dict) else None
        code = details.get("error_code") if isinstance(details, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        if code in SPEND_LIMIT_CODES:
            raise _Halt(
                ProviderFailure(
                    "reject",
                    "Anthropic refused the call because the organisation's spend limit is "
                    f"reached ({message or code}). An admin must raise the limit in the console.",
                    status=429,
                )
            )
        after = retry_after_s(response.headers)
        if after is not None and after > self.inline_retry_after_s:
            raise _Halt(
                ProviderFailure(
                    "defer",
                    f"Anthropic is rate limiting us for {after:g} s",
                    after_s=after,
                    status=429,
                )
            )
        return response


def to_wire_messages(messages: list[dict[str, Any]], *, cache: bool) -> list[dict[str, Any]]:
    """The neutral format is Anthropic's; add a cache breakpoint at the end of the history."""
    wire = copy.deepcopy(messages)
    if cache and wire:
        last = wire[-1]
        if isinstance(last["content"], str):
            last["content"] = [{"type": "text", "text": last["content"]}]
        if last["content"]:
            last["content"][-1]["cache_control"] = dict(_CACHE)
    return wire


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, client: AsyncAnthropic, *, inline_retry_after_s: float = 20) -> None:
        self.client = client.with_middleware(RetryPolicy(inline_retry_after_s))

    def _params(
        self, model: str, request: ModelRequest, *, max_output_tokens: int
    ) -> dict[str, Any]:
        system: list[dict[str, Any]] = [{"type": "text", "text": request.system}]
        if request.cache_prefix:
            # Tools come before the system prompt in the cached prefix, so one breakpoint here
            # caches tools + system prompt (which carries the work order).
            system[-1]["cache_control"] = dict(_CACHE)
        params: dict[str, Any] = {
            "model": model,
            "max_tokens": max_output_tokens,
            "system": system,
            "messages": to_wire_messages(request.messages, cache=request.cache_prefix),
        }
        if request.tools:
            params["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.input_schema}
                for t in request.tools
            ]
        if request.web_search is not None:
            # Anthropic's server tool: the search runs there, within max_uses and the domains.
            search: dict[str, Any] = {
                "type": WEB_SEARCH_TOOL,
                "name": "web_search",
                "max_uses": request.web_search.max_uses,
            }
            if request.web_search.allowed_domains is not None:
                search["allowed_domains"] = request.web_search.allowed_domains
            params.setdefault("tools", []).append(search)
        if request.tool_choice:
            params["tool_choice"] = {"type": "tool", "name": request.tool_choice}
        return params

    async def complete(
        self, model: str, request: ModelRequest, *, max_output_tokens: int, timeout_s: float
    ) -> ModelReply:
        params = self._params(model, request, max_output_tokens=max_output_tokens)
        started = time.monotonic()
        try:
            message = await self.client.messages.create(**params, timeout=timeout_s)
        except _Halt as halt:
            raise halt.failure from None
        except anthropic.APIStatusError as exc:
            raise classify(exc) from exc
        except anthropic.APITimeoutError as exc:
            raise ProviderFailure(
                "transient", "Anthropic did not answer in time", billed="unknown"
            ) from exc
        except anthropic.APIConnectionError as exc:
            raise ProviderFailure(
                "transient", f"could not reach Anthropic ({exc.message})", billed="unknown"
            ) from exc
        latency_ms = int((time.monotonic() - started) * 1000)
        texts: list[str] = []
        calls: list[ToolUse] = []
        server: list[dict[str, Any]] = []
        searches: list[str] = []
        for block in message.content:
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                calls.append(_tool_use(block.id, block.name, block.input))
            elif block.type in ("server_tool_use", "web_search_tool_result"):
                # Sent back as they came in later turns (the results are encrypted).
                server.append(block.model_dump(mode="json", exclude_none=True))
                if block.type == "server_tool_use" and isinstance(block.input, dict):
                    searches.append(str(block.input.get("query", "")))
        usage = message.usage
        server_use = getattr(usage, "server_tool_use", None)
        return ModelReply(
            text="".join(texts),
            tool_calls=calls,
            stop_reason=_STOP_REASONS.get(message.stop_reason or "end_turn", "end_turn"),
            usage=Usage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_write_tokens=usage.cache_creation_input_tokens or 0,
                cache_read_tokens=usage.cache_read_input_tokens or 0,
                web_search_requests=(server_use.web_search_requests or 0) if server_use else 0,
            ),
            provider=self.name,
            model=message.model,
            latency_ms=latency_ms,
            server_blocks=server,
            searches=searches,
        )


def _tool_use(id: str, name: str, arguments: object) -> ToolUse:
    raw = json.dumps(arguments)
    if not isinstance(arguments, dict):
        return ToolUse(id, name, None, raw, error="the tool input was not a JSON object")
    return ToolUse(id, name, arguments, raw)


def classify(exc: anthropic.APIStatusError) -> ProviderFailure:
    """What a final SDK error means for the run."""
    status = exc.status_code
    detail = exc.api_message or exc.message
    if isinstance(exc, anthropic.RateLimitError):
        if exc.error_code in SPEND_LIMIT_CODES:
            return ProviderFailure(
                "reject",
                f"Anthropic refused the call: the organisation's spend limit is reached ({detail}).",
                status=status,
            )
        after = retry_after_s(exc.response.headers)
        return ProviderFailure(
            "transient", f"Anthropic kept rate limiting us ({detail})", after_s=after, status=429
        )
    if isinstance(exc, anthropic.AuthenticationError):
        return ProviderFailure(
            "reject",
            "Anthropic rejected the API key (401). Check ANTHROPIC_API_KEY.",
            status=status,
        )
    if isinstance(exc, anthropic.PaymentRequiredError):
        return ProviderFailure(
            "reject",
            f"Anthropic needs billing attention before it serves calls ({detail}).",
            status=status,
        )
    if isinstance(exc, anthropic.PermissionDeniedError):
        return ProviderFailure(
            "reject",
            f"The Anthropic key may not use this model or feature ({detail}).",
            status=status,
        )
    if isinstance(exc, anthropic.NotFoundError):
        return ProviderFailure(
            "reject", f"Anthropic does not know the configured model ({detail}).", status=status
        )
    if isinstance(exc, anthropic.InternalServerError) or status >= 500 or status in (408, 409):
        return ProviderFailure(
            "transient", f"Anthropic is unavailable ({status}: {detail})", status=status
        )
    return ProviderFailure(
        "reject", f"Anthropic rejected the request ({status}: {detail}).", status=status
    )
