"""A scripted fake of the Anthropic Messages API (`POST /v1/messages`, JSON and SSE)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict

from . import SSE, FakeServer, StreamCut, chunk_json, chunk_text, estimate_tokens

__all__ = ["FakeAnthropic", "Reply", "ScriptItem", "Search", "ToolUse"]

_ERROR_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: (
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 50 requests per "
        "minute. Please try again later.",
    ),
    500: ("api_error", "Internal server error"),
    503: ("api_error", "Service unavailable"),
    529: ("overloaded_error", "Overloaded"),
}


def _new_id(prefix: str) -> str:
    return f"{prefix}_01{uuid.uuid4().hex[:22]}"


@dataclass
class ToolUse:
    """One `tool_use` content block the fake model emits."""

    name: str
    input: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: _new_id("toolu"))

    def block(self) -> dict[str, Any]:
        """The wire form of this block."""
        return {"type": "tool_use", "id": self.id, "name": self.name, "input": self.input}


@dataclass
class Search:
    """A web search the fake model runs with Anthropic's server tool, and the pages it finds
    (title, url); the fake keeps to the request's `max_uses` and `allowed_domains` as the real
    API does."""

    query: str
    pages: list[tuple[str, str]] = field(default_factory=list)
    id: str = field(default_factory=lambda: _new_id("srvtoolu"))


@dataclass
class Reply:
    """One scripted answer: a message (text and/or tool uses) or an HTTP error.

    `usage` keys override the derived defaults: input_tokens, output_tokens,
    cache_creation_input_tokens, cache_read_input_tokens. For streams, `cut_after`
    drops the connection after that many SSE events (or, with `error_event`, sends an
    SSE `error` event of that type instead); `chunk_delay` paces the events.
    """

    text: str | None = None
    tool_uses: list[ToolUse] = field(default_factory=list)
    stop_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    status: int = 200
    error_type: str | None = None
    error_message: str | None = None
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    chunk_delay: float = 0.0
    cut_after: int | None = None
    error_event: str | None = None
    searches: list[Search] = field(default_factory=list)
    hold: asyncio.Event | None = None
    """Answer only once the test sets this: the run waits at this model call meanwhile."""
    undeclared_ok: bool = False
    """Call tools the request did not declare on purpose (a test of how the engine copes);
    otherwise such a script is reported as a problem, since the real model would not."""

    @classmethod
    def tool(
        cls,
        name: str,
        input: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        text: str | None = None,
        **kwargs: Any,
    ) -> Reply:
        """A reply calling a single tool (optionally preceded by text)."""
        use = ToolUse(name, input or {}) if id is None else ToolUse(name, input or {}, id)
        return cls(text=text, tool_uses=[use], **kwargs)

    @classmethod
    def error(
        cls,
        status: int,
        message: str | None = None,
        *,
        type: str | None = None,
        retry_after: float | None = None,
        **kwargs: Any,
    ) -> Reply:
        """An HTTP error answer in Anthropic's `{"type": "error", ...}` shape."""
        return cls(
            status=status,
            error_type=type,
            error_message=message,
            retry_after=retry_after,
            **kwargs,
        )

    @property
    def is_error(self) -> bool:
        """Whether this reply is an HTTP error."""
        return self.status >= 400

    def content(self) -> list[dict[str, Any]]:
        """Content blocks of the reply message."""
        blocks: list[dict[str, Any]] = []
        if self.text is not None or not self.tool_uses:
            blocks.append({"type": "text", "text": self.text or ""})
        blocks.extend(use.block() for use in self.tool_uses)
        return blocks

    def final_stop_reason(self) -> str:
        """The stop reason sent (explicit, else `tool_use` when tools were called)."""
        return self.stop_reason or ("tool_use" if self.tool_uses else "end_turn")


ScriptItem = Reply | str | Callable[[dict[str, Any]], "Reply | str"]


class FakeAnthropic(FakeServer):
    """A fake Anthropic API answering `POST /v1/messages` from a FIFO script."""

    def __init__(self, api_key: str = "sk-ant-test") -> None:
        super().__init__()
        self.api_keys: set[str] = {api_key}
        self.requests: list[dict[str, Any]] = []
        self.held: asyncio.Event | None = None
        """While set to an unset event, /v1/messages answers wait until it is set."""
        self.headers: list[CIMultiDict[str]] = []
        self.credentials: list[str | None] = []
        self.count_requests: list[dict[str, Any]] = []
        self._script: deque[ScriptItem] = deque()
        self.app.router.add_post("/v1/messages", self._handle_messages)
        self.app.router.add_post("/v1/messages/count_tokens", self._handle_count_tokens)
        self.app.router.add_get("/v1/models", self._handle_models)
        self.models: list[str] = [
            "claude-opus-4-6", "claude-sonnet-4-6", "claude-sonnet-4-5", "claude-haiku-4-5",
        ]  # fmt: skip
        """What `GET /v1/models` lists (the account's available models)."""

    @property
    def api_key(self) -> str:
        """A valid API key to hand to `AsyncAnthropic(api_key=...)`."""
        return next(iter(self.api_keys))

    @property
    def base_url(self) -> str:
        """Base URL for `AsyncAnthropic(base_url=...)`."""
        return self.url

    @property
    def last_request(self) -> dict[str, Any]:
        """Body of the most recent `/v1/messages` request."""
        assert self.requests, "FakeAnthropic received no /v1/messages request"
        return self.requests[-1]

    @property
    def pending(self) -> int:
        """Number of scripted replies not yet consumed."""
        return len(self._script)

    def script(self, *items: ScriptItem) -> None:
        """Queue replies: a `Reply`, a plain string (text reply) or a callable of the body."""
        self._script.extend(items)

    # ------------------------------------------------------------------ HTTP plumbing

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        if not self._script:
            # No canned "OK.": an unscripted call is a bug in the test or the code under test.
            message = "FakeAnthropic: no scripted reply for this call"
            tools = [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
            self.problem(f"{message}; tools {tools}, last message: {_last_text(body)!r}")
            return Reply.error(400, message)
        item = self._script.popleft()
        if callable(item):
            item = item(body)
        reply = Reply(text=item) if isinstance(item, str) else item
        declared = {t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)}
        for use in reply.tool_uses:
            if use.name not in declared and not reply.undeclared_ok:
                self.problem(
                    f"scripted reply calls tool {use.name!r}, which the request did not declare "
                    f"(declared: {sorted(n for n in declared if n)})"
                )
        return reply

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if _credential(request) not in self.api_keys:
            return _error_response(Reply.error(401))
        if "anthropic-version" not in request.headers:
            return _error_response(
                Reply.error(400, "anthropic-version: header is required", type=None)
            )
        return None

    async def _handle_models(self, request: web.Request) -> web.Response:
        if (error := self._auth_error(request)) is not None:
            return error
        data = [
            {
                "type": "model",
                "id": model,
                "display_name": model,
                "created_at": "2026-01-01T00:00:00Z",
            }
            for model in self.models
        ]
        return web.json_response(
            {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            },
            headers=_ids(),
        )

    async def _handle_count_tokens(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.count_requests.append(body)
        if (error := self._auth_error(request)) is not None:
            return error
        counted = {k: body.get(k) for k in ("system", "messages", "tools") if body.get(k)}
        return web.json_response({"input_tokens": estimate_tokens(counted)}, headers=_ids())

    async def _handle_messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(CIMultiDict(request.headers))
        self.credentials.append(_credential(request))
        if (error := self._auth_error(request)) is not None:
            return error
        for name in ("model", "max_tokens", "messages"):
            if name not in body:
                self.problem(f"{name}: Field required")
                return _error_response(Reply.error(400, f"{name}: Field required"))
        if (invalid := invalid_request(body)) is not None:
            self.problem(invalid)
            return _error_response(Reply.error(400, invalid))
        reply = self._next_reply(body)
        if self.held is not None:
            await self.held.wait()
        if reply.hold is not None:
            await reply.hold.wait()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.is_error:
            return _error_response(reply)
        message = self._message(body, reply)
        if body.get("stream"):
            return await self._stream(request, message, reply)
        if reply.cut_after is not None:
            return SSE(request).abort()
        return web.json_response(message, headers={**_ids(), **reply.headers})

    def _message(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        searched, made = self._searches(body, reply)
        content = searched + reply.content()
        prompt = {k: body.get(k) for k in ("system", "messages", "tools") if body.get(k)}
        usage: dict[str, Any] = {
            "input_tokens": estimate_tokens(prompt),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": estimate_tokens(content),
            "service_tier": "standard",
        }
        usage.update(reply.usage)
        if reply.searches:
            usage["server_tool_use"] = {"web_search_requests": made}
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": usage["cache_creation_input_tokens"],
            "ephemeral_1h_input_tokens": 0,
        }
        stop_reason = reply.final_stop_reason()
        return {
            "id": _new_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": reply.model or body["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "stop_details": {"type": "refusal"} if stop_reason == "refusal" else None,
            "usage": usage,
        }

    def _searches(self, body: dict[str, Any], reply: Reply) -> tuple[list[dict[str, Any]], int]:
        """The server tool blocks of the reply's searches, and how many searches ran."""
        if not reply.searches:
            return [], 0
        tool = next(
            (t for t in body.get("tools") or [] if str(t.get("type", "")).startswith("web_search_")),
            None,
        )
        if tool is None:
            self.problem("scripted reply searches the web, but the request offered no web search")
            return [], 0
        allowed = tool.get("allowed_domains")
        blocks: list[dict[str, Any]] = []
        made = 0
        for search in reply.searches:
            blocks.append(
                {
                    "type": "server_tool_use",
                    "id": search.id,
                    "name": "web_search",
                    "input": {"query": search.query},
                }
            )
            if made >= int(tool.get("max_uses") or 1_000_000):
                result: Any = {
                    "type": "web_search_tool_result_error",
                    "error_code": "max_uses_exceeded",
                }
            else:
                made += 1
                result = [
                    {
                        "type": "web_search_result",
                        "title": title,
                        "url": url,
                        "encrypted_content": _new_id("enc"),
                        "page_age": None,
                    }
                    for title, url in search.pages
                    if allowed is None or _within(url, allowed)
                ]
            blocks.append(
                {"type": "web_search_tool_result", "tool_use_id": search.id, "content": result}
            )
        return blocks, made

    async def _stream(
        self, request: web.Request, message: dict[str, Any], reply: Reply
    ) -> web.StreamResponse:
        sse = SSE(
            request,
            headers={**_ids(), **reply.headers},
            cut_after=reply.cut_after,
            delay=reply.chunk_delay,
        )
        await sse.prepare()
        usage = message["usage"]
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "stop_details": None,
            "usage": {**usage, "output_tokens": 1},
        }
        try:
            await sse.send({"type": "message_start", "message": start}, "message_start")
            for index, block in enumerate(message["content"]):
                await self._stream_block(sse, index, block)
            delta = {
                "type": "message_delta",
                "delta": {
                    "stop_reason": message["stop_reason"],
                    "stop_sequence": None,
                    "stop_details": message["stop_details"],
                },
                "usage": {
                    k: usage[k]
                    for k in (
                        "input_tokens",
                        "cache_creation_input_tokens",
                        "cache_read_input_tokens",
                        "output_tokens",
                    )
                },
            }
            await sse.send(delta, "message_delta")
            await sse.send({"type": "message_stop"}, "message_stop")
        except StreamCut:
            if reply.error_event is None:
                return sse.abort()
            error = _error_body(reply.error_event, _message_for_type(reply.error_event))
            await sse.response.write(f"event: error\ndata: {json.dumps(error)}\n\n".encode())
        return await sse.finish()

    async def _stream_block(self, sse: SSE, index: int, block: dict[str, Any]) -> None:
        if block["type"] == "text":
            start: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in chunk_text(block["text"])]
        else:
            start = {**block, "input": {}}
            raw = json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": ""}]
            deltas += [{"type": "input_json_delta", "partial_json": p} for p in chunk_json(raw)]
        event = {"type": "content_block_start", "index": index, "content_block": start}
        await sse.send(event, "content_block_start")
        if index == 0:
            await sse.send({"type": "ping"}, "ping")
        for delta in deltas:
            event = {"type": "content_block_delta", "index": index, "delta": delta}
            await sse.send(event, "content_block_delta")
        await sse.send({"type": "content_block_stop", "index": index}, "content_block_stop")


def _within(url: str, domains: list[str]) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return any(host == d.lower() or host.endswith("." + d.lower()) for d in domains)


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _last_text(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    if not messages or not isinstance(messages[-1], dict):
        return ""
    content = messages[-1].get("content")
    if isinstance(content, str):
        return content[:200]
    texts = [str(b.get("text") or b.get("content") or b.get("type")) for b in _blocks(messages[-1])]
    return " | ".join(texts)[:200]


def invalid_request(body: dict[str, Any]) -> str | None:
    """What the real Messages API would answer 400 to in `messages` and `tools`, else None.

    Checked (each a documented or observed 400 of the real API): a non-empty message list of
    `user`/`assistant` roles with non-empty content and text; every `tool_use` answered by a
    `tool_result` in the very next message, tool results first there; every `tool_result`
    answering a `tool_use` of the message before; tool blocks only with `tools` defined;
    `tool_choice` naming a declared tool. Consecutive same-role messages are allowed: the real
    API merges them into one turn (and no longer insists on a leading user message).
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    declared = {t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)}
    tool_blocks = False
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            role = message.get("role") if isinstance(message, dict) else None
            return f"messages.{i}.role: Input should be 'user' or 'assistant' (got {role!r})"
        content = message.get("content")
        final_assistant = i == len(messages) - 1 and message["role"] == "assistant"
        if content in ("", []) and not final_assistant:
            return (
                f"messages.{i}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
        if not isinstance(content, (str, list)):
            return f"messages.{i}.content: Input should be a valid string or list"
        blocks = _blocks(message)
        for j, block in enumerate(blocks):
            if block.get("type") == "text" and not block.get("text"):
                return f"messages.{i}.content.{j}: text content blocks must be non-empty"
        uses = [b["id"] for b in blocks if b.get("type") == "tool_use"]
        results = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
        tool_blocks = tool_blocks or bool(uses or results)
        if uses and message["role"] != "assistant":
            return f"messages.{i}: `tool_use` blocks can only be in `assistant` messages"
        if uses:
            after = messages[i + 1] if i + 1 < len(messages) else {}
            answered = {
                b.get("tool_use_id")
                for b in _blocks(after)
                if b.get("type") == "tool_result" and after.get("role") == "user"
            }
            missing = [u for u in uses if u not in answered]
            if missing:
                return (
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(missing)}. Each `tool_use` block must have "
                    "a corresponding `tool_result` block in the next message."
                )
        if results:
            before = messages[i - 1] if i > 0 else {}
            asked = {b.get("id") for b in _blocks(before) if b.get("type") == "tool_use"}
            for j, block in enumerate(blocks):
                if block.get("type") == "tool_result" and block.get("tool_use_id") not in asked:
                    return (
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {block.get('tool_use_id')}. Each `tool_result` "
                        "block must have a corresponding `tool_use` block in the previous message."
                    )
            kinds = [b.get("type") for b in blocks]
            if kinds[: len(results)] != ["tool_result"] * len(results):
                return (
                    f"messages.{i}: `tool_result` blocks must come first in the content, "
                    "before any other block"
                )
    if tool_blocks and not body.get("tools"):
        return "Requests which include `tool_use` or `tool_result` blocks must define tools."
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool":
        if choice.get("name") not in declared:
            return f"tool_choice.name: tool {choice.get('name')!r} is not among the tools"
    return None


def _credential(request: web.Request) -> str | None:
    """The API key sent as `x-api-key` or as an `Authorization: Bearer` token."""
    auth = request.headers.get("Authorization", "")
    bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    return request.headers.get("x-api-key") or bearer


def _ids() -> dict[str, str]:
    return {"request-id": _new_id("req")}


def _message_for_type(error_type: str) -> str:
    return next((m for t, m in _ERROR_TYPES.values() if t == error_type), "Error")


def _error_body(error_type: str, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": _new_id("req"),
    }


def _error_response(reply: Reply) -> web.Response:
    default_type, default_message = _ERROR_TYPES.get(
        reply.status, ("api_error" if reply.status >= 500 else "invalid_request_error", "Error")
    )
    error_type = reply.error_type or default_type
    message = reply.error_message or (
        default_message if error_type == default_type else _message_for_type(error_type)
    )
    headers = {**_ids(), **reply.headers}
    if reply.retry_after is not None:
        headers["retry-after"] = f"{reply.retry_after:g}"
    return web.json_response(_error_body(error_type, message), status=reply.status, headers=headers)
