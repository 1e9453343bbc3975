"""Every configured MCP server, as one source of tools for the registry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from workers.config import Settings
from workers.logs import secrets_to_scrub
from workers.tools.mcp.connection import McpUnavailable, ServerConnection
from workers.tools.mcp.naming import assign
from workers.tools.mcp.tool import McpTool

log = logging.getLogger(__name__)

RETRY_FIRST_S = 5.0
RETRY_MAX_S = 300.0


class McpServers:
    """Connects to each configured server at start and turns its tools into `McpTool`s.

    A server that cannot be reached at start is tried again in the background (doubling waits)
    until its tools are listed once; after that a call finding it gone starts it again.
    """

    def __init__(self, settings: Settings, *, reserved: Iterable[str] = ()) -> None:
        self.connections = {
            name: ServerConnection(name, server)
            for name, server in sorted(settings.mcp_servers.items())
        }
        self._secrets = secrets_to_scrub(settings.secret_values())
        self._reserved = frozenset(reserved)
        self._built: tuple[tuple[int, ...], list[McpTool]] | None = None
        self._retry: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect to every server at once; one that fails is logged and tried again later."""
        if not self.connections:
            return
        results = await asyncio.gather(
            *(c.connect() for c in self.connections.values()), return_exceptions=True
        )
        failed = []
        for connection, result in zip(self.connections.values(), results, strict=True):
            if isinstance(result, BaseException):
                failed.append(connection)
                log.warning(
                    "MCP server %s could not be started: %s; its tools are not offered until it is",
                    connection.name,
                    result if isinstance(result, McpUnavailable) else type(result).__name__,
                )
            else:
                log.info(
                    "MCP server %s: %d tools (protocol %s)",
                    connection.name,
                    len(connection.tools),
                    connection.protocol_version,
                )
        if failed and self._retry is None:
            self._retry = asyncio.create_task(self._retry_until_listed(failed), name="mcp retry")

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            await asyncio.gather(self._retry, return_exceptions=True)
            self._retry = None
        await asyncio.gather(*(c.close() for c in self.connections.values()))

    def tools(self) -> list[McpTool]:
        """The tools of every server as last listed, under their model-facing names."""
        key = tuple(c.listings for c in self.connections.values())
        if self._built is not None and self._built[0] == key:
            return self._built[1]
        taken = set(self._reserved)
        built: list[McpTool] = []
        for connection in self.connections.values():
            by_name = {tool.name: tool for tool in connection.tools}
            names = assign(connection.name, list(by_name), taken)
            for original, name in sorted(names.items(), key=lambda item: item[1]):
                taken.add(name)
                built.append(
                    McpTool(name, by_name[original], connection, secrets=self._secret_values)
                )
            skipped = set(by_name) - set(names)
            if skipped:
                log.warning(
                    "MCP server %s: tools %s left out, their names clash",
                    connection.name,
                    sorted(skipped),
                )
        self._built = (key, built)
        return built

    def _secret_values(self) -> list[str]:
        return self._secrets

    async def _retry_until_listed(self, waiting: list[ServerConnection]) -> None:
        delay = RETRY_FIRST_S
        while waiting:
            await asyncio.sleep(delay)
            for connection in list(waiting):
                with contextlib.suppress(McpUnavailable):
                    await connection.connect()
                    waiting.remove(connection)
                    log.info(
                        "MCP server %s started: %d tools", connection.name, len(connection.tools)
                    )
            delay = min(delay * 2, RETRY_MAX_S)
