"""OpenAI Chat Completions behind the neutral provider interface.

Chat Completions rather than Responses because OpenAI-compatible local servers (vLLM, Ollama,
llama.cpp) speak it: pointing `OPENAI_BASE_URL` at one is how a deployment runs local models.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
import openai
from openai import AsyncOpenAI

from workers.providers.base import (
    ModelReply,
    ModelRequest,
    ProviderFailure,
    StopReason,
    ToolUse,
    Usage,
    retry_after_s,
)
from workers.providers.tls import shared_tls_context
from workers.untrusted import fence

_FINISH_REASONS: dict[str, StopReason] = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
    "content_filter": "refusal",
}
QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})


class _Halt(openai.OpenAIError):
    """Raised from the HTTP response hook; the SDK propagates OpenAIErrors without retrying."""

    def __init__(self, failure: ProviderFailure) -> None:
        super().__init__(failure.explanation)
        self.failure = failure


def retry_policy_hook(
    inline_retry_after_s: float,
) -> Callable[[httpx2.Response], Awaitable[None]]:
    """An httpx response hook: billing 429s are final, long Retry-After waits defer the run."""

    async def on_response(response: httpx2.Response) -> None:
        if response.status_code != 429:
            return
        await response.aread()
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        kind = error.get("type") if isinstance(error, dict) else None
        if code in QUOTA_CODES or kind in QUOTA_CODES:
            raise _Halt(_quota_failure())
        after = retry_after_s(response.headers)
        if after is not None and after > inline_retry_after_s:
            raise _Halt(
                ProviderFailure(
                    "defer",
                    f"OpenAI is rate limiting us for {after:g} s",
                    after_s=after,
                    status=429,
                )
            )

    return on_response


def make_openai_client(
    *, api_key: str | None, base_url: str | None, inline_retry_after_s: float, **kwargs: Any
) -> AsyncOpenAI:
    """An AsyncOpenAI whose HTTP client stops the SDK's retries where waiting cannot help."""
    http_client = openai.DefaultAsyncHttpxClient(
        event_hooks={"response": [retry_policy_hook(inline_retry_after_s)]},
        verify=shared_tls_context(),
    )
    return AsyncOpenAI(
        api_key=api_key or "unused", base_url=base_url, http_client=http_client, **kwargs
    )


def _quota_failure() -> ProviderFailure:
    return ProviderFailure(
        "reject",
        "OpenAI refused the call: the account is out of quota or credit. "
        "Add credit or raise the limit in the OpenAI billing settings.",
        status=429,
    )


def to_wire_messages(system: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Neutral (Anthropic-shaped) history to Chat Completions messages."""
    wire: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            wire.append({"role": message["role"], "content": content})
            continue
        texts = [b["text"] for b in content if b.get("type") == "text"]
        if message["role"] == "assistant":
            # Another provider's web search results, seen here as the outside text they are.
            texts = _search_results(content) + texts
            entry: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts) or None}
            calls = [
                {
                    "id": b["id"],
                    "type": "function",
                    "function": {"name": b["name"], "arguments": json.dumps(b.get("input") or {})},
                }
                for b in content
                if b.get("type") == "tool_use"
            ]
            if calls:
                entry["tool_calls"] = calls
            wire.append(entry)
            continue
        # Tool results must directly follow the assistant message that asked for them.
        for block in content:
            if block.get("type") == "tool_result":
                text = _result_text(block.get("content"))
                if block.get("is_error"):
                    text = f"Error: {text}"
                wire.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        if texts:
            wire.append({"role": "user", "content": "\n".join(texts)})
    return wire


def _search_results(content: list[dict[str, Any]]) -> list[str]:
    found = [
        f"- {r.get('title', '')}: {r.get('url', '')}"
        for b in content
        if b.get("type") == "web_search_tool_result" and isinstance(b.get("content"), list)
        for r in b["content"]
        if isinstance(r, dict) and r.get("type") == "web_search_result"
    ]
    return [fence("\n".join(found), "web search results")] if found else []


def _result_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return "" if content is None else str(content)


class OpenAIProvider:
    name = "openai"

    def __init__(self, client: AsyncOpenAI) -> None:
        self.client = client

    def _params(
        self, model: str, request: ModelRequest, *, max_output_tokens: int
    ) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": model,
            "messages": to_wire_messages(request.system, request.messages),
            "max_completion_tokens": max_output_tokens,
        }
        if request.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.input_schema,
                    },
                }
                for t in request.tools
            ]
        if request.tool_choice:
            params["tool_choice"] = {"type": "function", "function": {"name": request.tool_choice}}
        if searches(request):
            # Chat Completions searches on every call of a search model and takes no domain
            # list, so it is only offered when the policy allows any domain.
            params["web_search_options"] = {}
        return params

    async def complete(
        self, model: str, request: ModelRequest, *, max_output_tokens: int, timeout_s: float
    ) -> ModelReply:
        params = self._params(model, request, max_output_tokens=max_output_tokens)
        started = time.monotonic()
        try:
            completion = await self.client.chat.completions.create(**params, timeout=timeout_s)
        except _Halt as halt:
            raise halt.failure from None
        except openai.APIStatusError as exc:
            raise classify(exc) from exc
        except openai.APITimeoutError as exc:
            raise ProviderFailure(
                "transient", "OpenAI did not answer in time", billed="unknown"
            ) from exc
        except openai.APIConnectionError as exc:
            raise ProviderFailure(
                "transient", f"could not reach OpenAI ({exc.message})", billed="unknown"
            ) from exc
        latency_ms = int((time.monotonic() - started) * 1000)
        if not completion.choices:
            raise ProviderFailure("transient", "OpenAI returned no choices")
        choice = completion.choices[0]
        message = choice.message
        calls: list[ToolUse] = []
        for call in message.tool_calls or []:
            if call.type != "function":
                continue
            calls.append(_tool_use(call.id, call.function.name, call.function.arguments))
        stop = _FINISH_REASONS.get(choice.finish_reason or "stop", "end_turn")
        if message.refusal:
            stop = "refusal"
        elif calls and stop == "end_turn":
            stop = "tool_use"
        usage = completion.usage
        cached = 0
        prompt = completion_tokens = 0
        if usage is not None:
            prompt, completion_tokens = usage.prompt_tokens, usage.completion_tokens
            if usage.prompt_tokens_details is not None:
                cached = usage.prompt_tokens_details.cached_tokens or 0
        cited = [
            a.url_citation.url
            for a in message.annotations or []
            if a.type == "url_citation" and a.url_citation is not None
        ]
        return ModelReply(
            text=message.content or (message.refusal or ""),
            tool_calls=calls,
            stop_reason=stop,
            usage=Usage(
                input_tokens=prompt - cached,
                output_tokens=completion_tokens,
                cache_write_tokens=0,
                cache_read_tokens=cached,
                web_search_requests=1 if searches(request) else 0,
            ),
            provider=self.name,
            model=completion.model,
            latency_ms=latency_ms,
            searches=[f"(search citing {', '.join(cited[:5]) or 'no pages'})"]
            if searches(request)
            else [],
        )


def searches(request: ModelRequest) -> bool:
    """Whether this call searches the web (an unrestricted web_search on Chat Completions)."""
    search = request.web_search
    return search is not None and search.max_uses > 0 and search.allowed_domains is None


def _tool_use(id: str, name: str, raw: str) -> ToolUse:
    try:
        arguments = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        return ToolUse(id, name, None, raw, error=f"the arguments were not valid JSON ({exc.msg})")
    if not isinstance(arguments, dict):
        return ToolUse(id, name, None, raw, error="the arguments were not a JSON object")
    return ToolUse(id, name, arguments, raw)


def classify(exc: openai.APIStatusError) -> ProviderFailure:
    status = exc.status_code
    detail = exc.message
    if isinstance(exc, openai.RateLimitError):
        if exc.code in QUOTA_CODES or exc.type in QUOTA_CODES:
            return _quota_failure()
        after = retry_after_s(exc.response.headers)
        return ProviderFailure(
            "transient", "OpenAI kept rate limiting us", after_s=after, status=429
        )
    if isinstance(exc, openai.AuthenticationError):
        return ProviderFailure(
            "reject", "OpenAI rejected the API key (401). Check OPENAI_API_KEY.", status=status
        )
    if isinstance(exc, openai.PermissionDeniedError):
        return ProviderFailure(
            "reject", f"The OpenAI key may not use this model ({detail}).", status=status
        )
    if isinstance(exc, openai.NotFoundError):
        return ProviderFailure(
            "reject", f"OpenAI does not know the configured model ({detail}).", status=status
        )
    if isinstance(exc, openai.InternalServerError) or status >= 500 or status in (408, 409):
        return ProviderFailure("transient", f"OpenAI is unavailable ({status})", status=status)
    return ProviderFailure(
        "reject", f"OpenAI rejected the request ({status}: {detail}).", status=status
    )
