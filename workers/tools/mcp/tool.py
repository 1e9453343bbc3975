"""An MCP server's tool as a Delegate tool: validated before it leaves, timed, its result
untrusted, and every failure a tool error the run can handle."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError
from mcp import types

from workers import telemetry
from workers.providers.base import ToolSpec
from workers.tools.base import Authority, ToolContext, ToolInputError, ToolResult
from workers.tools.mcp.connection import McpCallFailed, McpUnavailable, ServerConnection
from workers.tools.mcp.content import clean, result_text
from workers.tools.mcp.origin import McpOrigin

MAX_DESCRIPTION_CHARS = 2_000
MAX_ERRORS_SHOWN = 3
EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


def origin_of(server: str, tool: types.Tool, *, trusted: bool) -> McpOrigin:
    hints = tool.annotations
    return McpOrigin(
        server=server,
        tool=tool.name,
        trusted=trusted,
        read_only=hints.read_only_hint if hints else None,
        destructive=hints.destructive_hint if hints else None,
        idempotent=hints.idempotent_hint if hints else None,
        open_world=hints.open_world_hint if hints else None,
    )


class McpTool:
    """One tool of one MCP server, offered to the model as `name`."""

    def __init__(
        self,
        name: str,
        tool: types.Tool,
        connection: ServerConnection,
        *,
        secrets: Callable[[], Sequence[str]] = list,
    ) -> None:
        self.connection = connection
        self.origin = origin_of(connection.name, tool, trusted=connection.settings.trusted)
        self.input_schema = _object_schema(tool.input_schema)
        description = (tool.description or tool.title or tool.name).strip()
        if len(description) > MAX_DESCRIPTION_CHARS:
            description = description[:MAX_DESCRIPTION_CHARS] + " …"
        self.spec = ToolSpec(
            name=name,
            description=f"[MCP server {connection.name}] {description}",
            input_schema=self.input_schema,
        )
        self.authority = Authority(
            network=False,  # the server reaches what it reaches; the policy grants it by name
            side_effects=not self.origin.believed_read_only,
            summary=f"tool {tool.name!r} of the MCP server {connection.name!r}",
        )
        self._secrets = secrets

    @property
    def grant_name(self) -> str:
        return self.origin.grant_name

    def describe(self, arguments: dict[str, Any]) -> str:
        return f"Calling {self.origin.tool} on {self.origin.server}"

    @cached_property
    def _validator(self) -> jsonschema.protocols.Validator | None:
        try:
            cls = jsonschema.validators.validator_for(self.input_schema)
            cls.check_schema(self.input_schema)
            return cls(self.input_schema)
        except SchemaError:
            return None  # the server's schema is broken: let the server judge the arguments

    def check(self, arguments: dict[str, Any]) -> None:
        """ToolInputError, shown to the model, when the arguments do not fit the schema."""
        validator = self._validator
        if validator is None:
            return
        errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))
        if not errors:
            return
        lines = []
        for error in errors[:MAX_ERRORS_SHOWN]:
            where = "/".join(str(p) for p in error.absolute_path) or "(arguments)"
            lines.append(f"{where}: {error.message[:300]}")
        more = (
            f" (and {len(errors) - MAX_ERRORS_SHOWN} more)"
            if len(errors) > MAX_ERRORS_SHOWN
            else ""
        )
        raise ToolInputError(
            f"the arguments do not match {self.spec.name}'s schema: " + "; ".join(lines) + more
        )

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        self.check(arguments)  # before anything leaves for the server
        server, tool = self.origin.server, self.origin.tool
        settings = self.connection.settings
        timeout_s = settings.timeout_s
        if ctx.remaining_s is not None:
            timeout_s = max(0.001, min(timeout_s, ctx.remaining_s))
        source = f"MCP server {server}, tool {tool}"
        secrets = self._secrets()
        started = time.monotonic()
        try:
            result = await self.connection.call(tool, arguments, timeout_s=timeout_s)
        except TimeoutError:
            return self._failed(
                "timeout",
                started,
                f"{tool} on {server} did not answer within {timeout_s:g} s and was stopped",
            )
        except McpUnavailable as exc:
            return self._failed(
                "unavailable", started, f"the MCP server {server} is unavailable: {exc}"
            )
        except McpCallFailed as exc:
            # The message may quote the server: fenced like its results.
            text = clean(f"{tool} on {server} failed: {exc}", secrets=secrets, max_chars=2_000)
            return self._failed("protocol", started, text, untrusted_source=source)
        text = clean(result_text(result), secrets=secrets, max_chars=settings.max_result_chars)
        if result.is_error:
            return self._failed("tool_error", started, text, untrusted_source=source)
        telemetry.record_mcp_call(
            server=server, tool=tool, error=None, latency_s=time.monotonic() - started
        )
        return ToolResult(text, untrusted_source=source)

    def _failed(
        self, kind: str, started: float, text: str, *, untrusted_source: str | None = None
    ) -> ToolResult:
        telemetry.record_mcp_call(
            server=self.origin.server,
            tool=self.origin.tool,
            error=kind,
            latency_s=time.monotonic() - started,
        )
        return ToolResult(text, is_error=True, untrusted_source=untrusted_source)


def _object_schema(schema: dict[str, Any] | None) -> dict[str, Any]:
    """The server's input schema; providers need an object schema, so anything else is
    replaced by an empty one (and the server judges the arguments)."""
    if isinstance(schema, dict) and schema.get("type") == "object":
        return schema
    return dict(EMPTY_SCHEMA)
