"""A scripted fake of the OpenAI Chat Completions and Responses APIs (JSON and SSE)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from . import SSE, FakeServer, StreamCut, chunk_json, chunk_text, estimate_tokens

__all__ = ["FakeOpenAI", "Reply", "ScriptItem", "ToolCall"]

# status -> (type, code, message)
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. "
        "Please try again in 1s.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors."
)


def _new_id(prefix: str, sep: str = "_") -> str:
    return f"{prefix}{sep}{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    """One function call the fake model makes (`arguments` as a dict or a raw JSON string)."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str = field(default_factory=lambda: _new_id("call"))

    @property
    def arguments_json(self) -> str:
        """The arguments as the JSON string sent on the wire."""
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass
class Reply:
    """One scripted answer for either endpoint: text, tool calls, a refusal, or an HTTP error.

    `usage` keys override the derived defaults: input_tokens (alias prompt_tokens),
    output_tokens (alias completion_tokens), cached_tokens, reasoning_tokens.
    `finish_reason` "length" makes a Responses answer `incomplete`. For streams,
    `cut_after` drops the connection after that many SSE events; `chunk_delay` paces them.
    """

    text: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    refusal: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    status: int = 200
    error_type: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_param: str | None = None
    retry_after: float | None = None
    citations: list[str] = field(default_factory=list)
    """Chat Completions only: pages a search model cites (`url_citation` annotations)."""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    chunk_delay: float = 0.0
    cut_after: int | None = None
    undeclared_ok: bool = False
    """Call tools the request did not declare on purpose (a test of how the engine copes);
    otherwise such a script is reported as a problem, since the real model would not."""

    @classmethod
    def tool(
        cls,
        name: str,
        arguments: dict[str, Any] | str | None = None,
        *,
        id: str | None = None,
        text: str | None = None,
        **kwargs: Any,
    ) -> Reply:
        """A reply making a single function call (optionally with text)."""
        call = ToolCall(name, {} if arguments is None else arguments)
        if id is not None:
            call.id = id
        return cls(text=text, tool_calls=[call], **kwargs)

    @classmethod
    def error(
        cls,
        status: int,
        message: str | None = None,
        *,
        type: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        **kwargs: Any,
    ) -> Reply:
        """An HTTP error answer in OpenAI's `{"error": {...}}` shape."""
        return cls(
            status=status,
            error_type=type,
            error_code=code,
            error_message=message,
            retry_after=retry_after,
            **kwargs,
        )

    @classmethod
    def insufficient_quota(cls, **kwargs: Any) -> Reply:
        """The 429 `insufficient_quota` error (billing, not rate limiting)."""
        return cls.error(
            429, _QUOTA_MESSAGE, type="insufficient_quota", code="insufficient_quota", **kwargs
        )

    @property
    def is_error(self) -> bool:
        """Whether this reply is an HTTP error."""
        return self.status >= 400

    def chat_finish_reason(self) -> str:
        """Chat `finish_reason` (explicit, else `tool_calls` when tools were called)."""
        return self.finish_reason or ("tool_calls" if self.tool_calls else "stop")

    def output_tokens(self) -> int:
        """Default completion token count derived from the reply size."""
        parts: list[Any] = [self.text or "", self.refusal or ""]
        parts += [[c.name, c.arguments_json] for c in self.tool_calls]
        return estimate_tokens(parts)


ScriptItem = Reply | str | Callable[[dict[str, Any]], "Reply | str"]


class FakeOpenAI(FakeServer):
    """A fake OpenAI API answering chat completions and responses from a FIFO script."""

    def __init__(self, api_key: str = "sk-test") -> None:
        super().__init__()
        self.api_keys: set[str] = {api_key}
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.headers: list[CIMultiDict[str]] = []
        self._script: deque[ScriptItem] = deque()
        self.app.router.add_post("/v1/chat/completions", self._handle_chat)
        self.app.router.add_post("/v1/responses", self._handle_responses)
        self.app.router.add_get("/v1/models", self._handle_models)
        self.models: list[str] = ["gpt-5.2", "gpt-5", "gpt-5-mini", "gpt-5-nano"]
        """What `GET /v1/models` lists (the account's available models)."""

    @property
    def api_key(self) -> str:
        """A valid API key to hand to `AsyncOpenAI(api_key=...)`."""
        return next(iter(self.api_keys))

    @property
    def base_url(self) -> str:
        """Base URL for `AsyncOpenAI(base_url=...)`."""
        return f"{self.url}/v1"

    @property
    def last_request(self) -> dict[str, Any]:
        """Body of the most recent request to either endpoint."""
        assert self.requests, "FakeOpenAI received no request"
        return self.requests[-1]

    @property
    def pending(self) -> int:
        """Number of scripted replies not yet consumed."""
        return len(self._script)

    def script(self, *items: ScriptItem) -> None:
        """Queue replies: a `Reply`, a plain string (text reply) or a callable of the body."""
        self._script.extend(items)

    # ------------------------------------------------------------------ HTTP plumbing

    async def _receive(
        self, request: web.Request, required: tuple[str, ...]
    ) -> tuple[dict[str, Any], Reply | web.Response]:
        body = await request.json()
        self.requests.append(body)
        self.paths.append(request.path)
        self.headers.append(CIMultiDict(request.headers))
        auth = request.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer "):
            message = "You didn't provide an API key. You need to provide your API key in an "
            message += (
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            return body, _error_response(Reply.error(401, message, code=""))
        if auth[7:].strip() not in self.api_keys:
            return body, _error_response(Reply.error(401))
        for name in required:
            if name not in body:
                self.problem(f"{request.path}: missing required parameter {name!r}")
                missing = Reply.error(400, f"Missing required parameter: '{name}'.")
                missing.error_code, missing.error_param = "missing_required_parameter", name
                return body, _error_response(missing)
        check = invalid_chat if request.path.endswith("/chat/completions") else invalid_responses
        if (invalid := check(body)) is not None:
            message, param = invalid
            self.problem(f"{request.path}: {message}")
            rejected = Reply.error(400, message, code="invalid_request_error" if param else None)
            rejected.error_param = param
            return body, _error_response(rejected)
        if not self._script:
            # No canned "OK.": an unscripted call is a bug in the test or the code under test.
            message = "FakeOpenAI: no scripted reply for this call"
            self.problem(f"{request.path}: {message}")
            return body, _error_response(Reply.error(400, message))
        item = self._script.popleft()
        if callable(item):
            item = item(body)
        reply = Reply(text=item) if isinstance(item, str) else item
        declared = _declared_tools(body)
        for call in reply.tool_calls:
            if call.name not in declared and not reply.undeclared_ok:
                self.problem(
                    f"scripted reply calls tool {call.name!r}, which the request did not declare "
                    f"(declared: {sorted(declared)})"
                )
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.is_error:
            return body, _error_response(reply)
        return body, reply

    async def _handle_models(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer ") or auth[7:].strip() not in self.api_keys:
            return _error_response(Reply.error(401))
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "openai"}
                    for m in self.models
                ],
            }
        )

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        body, reply = await self._receive(request, ("model", "messages"))
        if isinstance(reply, web.Response):
            return reply
        completion = _chat_completion(body, reply)
        if body.get("stream"):
            return await _stream_chat(request, body, completion, reply)
        if reply.cut_after is not None:
            return SSE(request).abort()
        return web.json_response(completion, headers={**_ids(), **reply.headers})

    async def _handle_responses(self, request: web.Request) -> web.StreamResponse:
        body, reply = await self._receive(request, ("model",))
        if isinstance(reply, web.Response):
            return reply
        response = _response_object(body, reply)
        if body.get("stream"):
            return await _stream_response(request, response, reply)
        if reply.cut_after is not None:
            return SSE(request).abort()
        return web.json_response(response, headers={**_ids(), **reply.headers})


# ---------------------------------------------------------------------- shared helpers


def _ids() -> dict[str, str]:
    return {"x-request-id": _new_id("req"), "openai-processing-ms": "42"}


def _declared_tools(body: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else tool.get("name")
            if name:
                names.add(str(name))
    return names


def invalid_chat(body: dict[str, Any]) -> tuple[str, str | None] | None:
    """(message, param) of the 400 the real Chat Completions API answers, else None.

    Checked: a non-empty message list with known roles; every assistant `tool_calls` id
    answered by a `tool` message before the next non-tool message; every `tool` message
    answering a preceding call; a forced `tool_choice` naming a declared function.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "[] is too short - 'messages'", "messages"
    roles = ("system", "developer", "user", "assistant", "tool", "function")
    open_calls: dict[str, int] = {}
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in roles:
            return f"Invalid value: {role!r}. Supported values are: {roles}.", f"messages[{i}].role"
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in open_calls:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            del open_calls[call_id]
            continue
        if open_calls:
            first = min(open_calls.values())
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(open_calls)}",
                f"messages.[{first}].role",
            )
        if role == "assistant":
            open_calls = {
                str(call.get("id")): i for call in message.get("tool_calls") or [] if call
            }
    if open_calls:
        first = min(open_calls.values())
        return (
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(open_calls)}",
            f"messages.[{first}].role",
        )
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name not in _declared_tools(body):
            return f"Invalid value for 'tool_choice': function {name!r} is not among the tools.", (
                "tool_choice"
            )
    return None


def invalid_responses(body: dict[str, Any]) -> tuple[str, str | None] | None:
    """(message, param) of the 400 the real Responses API answers, else None: every
    `function_call` item in `input` needs its `function_call_output` (and vice versa)."""
    items = body.get("input")
    if not isinstance(items, list):
        return None
    calls = {
        i.get("call_id") for i in items if isinstance(i, dict) and i.get("type") == "function_call"
    }
    outputs = {
        i.get("call_id")
        for i in items
        if isinstance(i, dict) and i.get("type") == "function_call_output"
    }
    for call_id in sorted(str(c) for c in calls - outputs):
        return f"No tool output found for function call {call_id}.", "input"
    for call_id in sorted(str(c) for c in outputs - calls):
        return f"No tool call found for function call output with call_id {call_id}.", "input"
    return None


def _token_counts(prompt: object, reply: Reply) -> dict[str, int]:
    usage = dict(reply.usage)
    if "prompt_tokens" in usage:
        usage.setdefault("input_tokens", usage.pop("prompt_tokens"))
    if "completion_tokens" in usage:
        usage.setdefault("output_tokens", usage.pop("completion_tokens"))
    return {
        "input_tokens": usage.get("input_tokens", estimate_tokens(prompt)),
        "output_tokens": usage.get("output_tokens", reply.output_tokens()),
        "cached_tokens": usage.get("cached_tokens", 0),
        "reasoning_tokens": usage.get("reasoning_tokens", 0),
    }


def _error_response(reply: Reply) -> web.Response:
    default_type, default_code, default_message = _ERRORS.get(
        reply.status,
        ("server_error" if reply.status >= 500 else "invalid_request_error", None, "Error."),
    )
    error = {
        "message": reply.error_message or default_message,
        "type": reply.error_type or default_type,
        "param": reply.error_param,
        # An explicit empty `error_code` means the wire carries `"code": null`.
        "code": (reply.error_code or default_code) if reply.error_code != "" else None,
    }
    headers = {**_ids(), **reply.headers}
    if reply.retry_after is not None:
        headers["retry-after"] = f"{reply.retry_after:g}"
    return web.json_response({"error": error}, status=reply.status, headers=headers)


# ---------------------------------------------------------------------- chat completions


def _chat_completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    counts = _token_counts({"messages": body["messages"], "tools": body.get("tools")}, reply)
    content = reply.text
    if content is None and not reply.tool_calls and reply.refusal is None:
        content = ""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "refusal": reply.refusal,
        "annotations": [
            {
                "type": "url_citation",
                "url_citation": {"url": url, "title": url, "start_index": 0, "end_index": 0},
            }
            for url in reply.citations
        ],
    }
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json},
            }
            for call in reply.tool_calls
        ]
    return {
        "id": _new_id("chatcmpl", "-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model or body["model"],
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": reply.chat_finish_reason(),
            }
        ],
        "usage": {
            "prompt_tokens": counts["input_tokens"],
            "completion_tokens": counts["output_tokens"],
            "total_tokens": counts["input_tokens"] + counts["output_tokens"],
            "prompt_tokens_details": {"cached_tokens": counts["cached_tokens"], "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": counts["reasoning_tokens"],
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


async def _stream_chat(
    request: web.Request, body: dict[str, Any], completion: dict[str, Any], reply: Reply
) -> web.StreamResponse:
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {k: completion[k] for k in ("id", "object", "created", "model", "service_tier")}
    base["object"] = "chat.completion.chunk"
    base["system_fingerprint"] = completion["system_fingerprint"]

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        out: dict[str, Any] = {**base, "choices": [choice]}
        if include_usage:
            out["usage"] = None
        return out

    message = completion["choices"][0]["message"]
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": "", "refusal": None}]
    deltas += [{"content": piece} for piece in chunk_text(message["content"] or "")]
    deltas += [{"refusal": piece} for piece in chunk_text(message["refusal"] or "")]
    for index, call in enumerate(message.get("tool_calls", [])):
        head = {"name": call["function"]["name"], "arguments": ""}
        deltas.append(
            {
                "tool_calls": [
                    {"index": index, "id": call["id"], "type": "function", "function": head}
                ]
            }
        )
        deltas += [
            {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
            for piece in chunk_json(call["function"]["arguments"])
        ]
    sse = SSE(
        request,
        headers={**_ids(), **reply.headers},
        cut_after=reply.cut_after,
        delay=reply.chunk_delay,
    )
    await sse.prepare()
    try:
        for delta in deltas:
            await sse.send(chunk(delta))
        await sse.send(chunk({}, completion["choices"][0]["finish_reason"]))
        if include_usage:
            await sse.send({**base, "choices": [], "usage": completion["usage"]})
        await sse.send("[DONE]")
    except StreamCut:
        return sse.abort()
    return await sse.finish()


# ---------------------------------------------------------------------- responses


def _normalise_tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        return tool
    return {
        "type": "function",
        "name": tool.get("name", ""),
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict", True),
    }


def _output_items(reply: Reply, status: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    content: list[dict[str, Any]] = []
    if reply.text is not None or (not reply.tool_calls and reply.refusal is None):
        content.append(
            {"type": "output_text", "text": reply.text or "", "annotations": [], "logprobs": []}
        )
    if reply.refusal is not None:
        content.append({"type": "refusal", "refusal": reply.refusal})
    if content:
        items.append(
            {
                "id": _new_id("msg"),
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": content,
            }
        )
    items += [
        {
            "id": _new_id("fc"),
            "type": "function_call",
            "status": "completed",
            "call_id": call.id,
            "name": call.name,
            "arguments": call.arguments_json,
        }
        for call in reply.tool_calls
    ]
    return items


def _response_object(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    prompt = {k: body.get(k) for k in ("instructions", "input", "tools") if body.get(k)}
    counts = _token_counts(prompt, reply)
    incomplete = reply.finish_reason == "length"
    status = "incomplete" if incomplete else "completed"
    created = int(time.time())
    return {
        "id": _new_id("resp"),
        "object": "response",
        "created_at": created,
        "completed_at": created,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": reply.model or body["model"],
        "output": _output_items(reply, status),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": [_normalise_tool(t) for t in body.get("tools") or []],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": counts["input_tokens"],
            "input_tokens_details": {
                "cached_tokens": counts["cached_tokens"],
                "cache_write_tokens": 0,
            },
            "output_tokens": counts["output_tokens"],
            "output_tokens_details": {"reasoning_tokens": counts["reasoning_tokens"]},
            "total_tokens": counts["input_tokens"] + counts["output_tokens"],
        },
        "user": None,
        "metadata": body.get("metadata") or {},
    }


class _ResponseEvents:
    """Sends Responses API stream events with increasing `sequence_number`s."""

    def __init__(self, sse: SSE) -> None:
        self.sse = sse
        self.sequence = 0

    async def send(self, type_: str, **fields: Any) -> None:
        await self.sse.send({"type": type_, "sequence_number": self.sequence, **fields}, type_)
        self.sequence += 1

    async def item(self, index: int, item: dict[str, Any]) -> None:
        if item["type"] == "message":
            await self.send(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "content": []},
            )
            for part_index, part in enumerate(item["content"]):
                await self.part(index, item["id"], part_index, part)
        else:
            await self.send(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            for piece in chunk_json(item["arguments"]):
                await self.send(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=piece,
                )
            await self.send(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=item["name"],
                arguments=item["arguments"],
            )
        await self.send("response.output_item.done", output_index=index, item=item)

    async def part(self, index: int, item_id: str, part_index: int, part: dict[str, Any]) -> None:
        where = {"item_id": item_id, "output_index": index, "content_index": part_index}
        is_text = part["type"] == "output_text"
        empty = {**part, "text": ""} if is_text else {**part, "refusal": ""}
        await self.send("response.content_part.added", **where, part=empty)
        if is_text:
            for piece in chunk_text(part["text"]):
                await self.send("response.output_text.delta", **where, delta=piece, logprobs=[])
            await self.send("response.output_text.done", **where, text=part["text"], logprobs=[])
        else:
            for piece in chunk_text(part["refusal"]):
                await self.send("response.refusal.delta", **where, delta=piece)
            await self.send("response.refusal.done", **where, refusal=part["refusal"])
        await self.send("response.content_part.done", **where, part=part)


async def _stream_response(
    request: web.Request, response: dict[str, Any], reply: Reply
) -> web.StreamResponse:
    sse = SSE(
        request,
        headers={**_ids(), **reply.headers},
        cut_after=reply.cut_after,
        delay=reply.chunk_delay,
    )
    await sse.prepare()
    events = _ResponseEvents(sse)
    pending = {
        **response,
        "status": "in_progress",
        "completed_at": None,
        "incomplete_details": None,
        "output": [],
        "usage": None,
    }
    try:
        await events.send("response.created", response=pending)
        await events.send("response.in_progress", response=pending)
        for index, item in enumerate(response["output"]):
            await events.item(index, item)
        final = (
            "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        )
        await events.send(final, response=response)
    except StreamCut:
        return sse.abort()
    return await sse.finish()
