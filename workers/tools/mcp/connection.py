"""One MCP server: started (or reached) at start, its tools listed, kept listed, restarted.

The SDK's client is an async context that must be entered and left by one task, so each
connection lives in a task of its own (`_serve`): it connects, lists the tools (every page),
listens for list changes (`notifications/tools/list_changed` on earlier protocol versions,
`subscriptions/listen` on 2026-07-28) and lists again when one comes, until it is closed or the
server goes away. Runs call tools through it from their own tasks. A connection found dead (the
server crashed, the HTTP session ended) is started again by the next call; the last listing is
kept meanwhile, so the model keeps seeing the tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx2
from mcp import Client, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ListenNotSupportedError, SubscriptionLost
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from workers.config import McpServerSettings

log = logging.getLogger(__name__)

MAX_LIST_PAGES = 100
"""A server whose tools/list never stops paginating is cut off here."""
CLOSE_TIMEOUT_S = 10.0
CLIENT_INFO = types.Implementation(name="delegate", version="0.1.0")


class McpUnavailable(Exception):
    """The server cannot be reached: it did not start, it crashed, or it refused the session."""


class McpCallFailed(Exception):
    """The server answered the call with a protocol error or something that is not MCP."""


@dataclass
class _Session:
    """One live connection (one server process, or one HTTP session)."""

    client: Client | None = None
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stale: bool = False
    stopping: bool = False
    dead: bool = False

    @property
    def alive(self) -> bool:
        if self.client is None or self.dead or self.task is None or self.task.done():
            return False
        # The SDK marks its dispatcher closed once the server's stream ends (a crash, an HTTP
        # session gone); a call on it would fail without being sent. Best effort: private.
        dispatcher = getattr(self.client.session, "_dispatcher", None)
        return not getattr(dispatcher, "_closed", False)

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()


class ServerConnection:
    """The connection to one configured MCP server."""

    def __init__(self, name: str, settings: McpServerSettings) -> None:
        self.name = name
        self.settings = settings
        self.tools: list[types.Tool] = []
        """The last complete listing (kept while the server is down)."""
        self.listed = False
        self.listings = 0
        """How many listings were taken (a change shows as a new number)."""
        self.protocol_version: str | None = None
        self.last_error: str | None = None
        self._session: _Session | None = None
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._session is not None and self._session.alive

    async def connect(self) -> None:
        """Start the server if it is not running, and list its tools; McpUnavailable if not."""
        async with self._lock:
            if self.connected:
                return
            await self._drop()
            session = _Session()
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            session.task = asyncio.create_task(
                self._serve(session, ready), name=f"mcp server {self.name}"
            )
            self._session = session
            try:
                async with asyncio.timeout(self.settings.connect_timeout_s):
                    await asyncio.shield(ready)
            except TimeoutError:
                await self._drop()
                self.last_error = (
                    f"no answer within {self.settings.connect_timeout_s:g} s of starting"
                )
                raise McpUnavailable(self.last_error) from None
            except McpUnavailable as exc:
                await self._drop()
                self.last_error = str(exc)
                raise
            self.last_error = None

    async def call(
        self, tool: str, arguments: dict[str, Any], *, timeout_s: float
    ) -> types.CallToolResult:
        """Call `tool`, restarting the server first if it went away.

        Raises McpUnavailable, McpCallFailed or TimeoutError; never anything from the SDK."""
        await self.connect()
        session = self._session
        assert session is not None and session.client is not None
        try:
            async with asyncio.timeout(timeout_s):
                return await session.client.call_tool(tool, arguments)
        except MCPError as exc:
            if exc.error.code == CONNECTION_CLOSED:
                session.dead = True
                session.stop()
                raise McpUnavailable(
                    "the server closed the connection during the call (it may have crashed); "
                    "it is started again on the next call"
                ) from None
            raise McpCallFailed(f"the server refused the call: {exc.error.message}") from None
        except TimeoutError:
            raise
        except Exception as exc:  # an answer the SDK could not read: not MCP
            raise McpCallFailed(
                f"the server's answer could not be read ({type(exc).__name__})"
            ) from None

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    async def _drop(self) -> None:
        session, self._session = self._session, None
        if session is None or session.task is None:
            return
        session.stop()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.wait({session.task})
        except TimeoutError:
            session.task.cancel()
            await asyncio.gather(session.task, return_exceptions=True)

    # The connection's own task

    async def _serve(self, session: _Session, ready: asyncio.Future[None]) -> None:
        try:
            async with AsyncExitStack() as stack:
                client = await stack.enter_async_context(self._client(session))
                self.protocol_version = client.protocol_version
                await self._list(client)
                await self._listen(stack, client, session)
                session.client = client
                ready.set_result(None)
                while True:
                    await session.wake.wait()
                    session.wake.clear()
                    if session.stopping:
                        break
                    if session.stale:
                        session.stale = False
                        await self._list(client)
        except Exception as exc:
            reason = _describe(exc)
            if not ready.done():
                ready.set_exception(McpUnavailable(reason))
            elif not session.stopping:
                log.warning("MCP server %s went away: %s", self.name, reason)
        except asyncio.CancelledError:
            if not ready.done():
                ready.set_exception(McpUnavailable("stopped while starting"))
            raise
        finally:
            session.dead = True
            session.client = None
            if not ready.done():
                ready.set_exception(McpUnavailable("the connection ended while starting"))

    def _client(self, session: _Session) -> Client:
        async def on_message(message: Any) -> None:
            # Earlier protocol versions announce list changes as a notification.
            if isinstance(message, types.ToolListChangedNotification) or isinstance(
                getattr(message, "root", None), types.ToolListChangedNotification
            ):
                session.stale = True
                session.wake.set()
            elif isinstance(message, Exception):
                log.warning("MCP server %s sent something that is not MCP: %s", self.name, message)

        return Client(
            self._transport(),
            message_handler=on_message,
            cache=None,  # a listing is ours to refresh; never served stale from a cache
            client_info=CLIENT_INFO,
            read_timeout_seconds=self.settings.connect_timeout_s,
        )

    def _transport(self) -> Any:
        s = self.settings
        if s.command is not None:
            params = StdioServerParameters(
                command=s.command[0], args=s.command[1:], env=dict(s.env) or None, cwd=s.cwd
            )
            return stdio_client(params)
        assert s.url is not None
        http = httpx2.AsyncClient(
            headers=dict(s.headers),
            timeout=httpx2.Timeout(s.connect_timeout_s, read=None),
            trust_env=False,
        )
        return _closing(streamable_http_client(s.url, http_client=http), http)

    async def _list(self, client: Client) -> None:
        tools: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        else:
            log.warning(
                "MCP server %s: tools/list stopped after %d pages", self.name, MAX_LIST_PAGES
            )
        self.tools = tools
        self.listed = True
        self.listings += 1

    async def _listen(self, stack: AsyncExitStack, client: Client, session: _Session) -> None:
        """On 2026-07-28 connections list changes come through a subscription: keep one open."""
        if client.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            return
        capability = client.server_capabilities.tools
        if capability is None or not capability.list_changed:
            return
        try:
            subscription = await stack.enter_async_context(client.listen(tools_list_changed=True))
        except (ListenNotSupportedError, MCPError, SubscriptionLost, TimeoutError) as exc:
            log.info("MCP server %s: no list-change subscription (%s)", self.name, exc)
            return

        async def watch() -> None:
            try:
                async for _event in subscription:
                    session.stale = True
                    session.wake.set()
            except Exception as exc:
                log.info("MCP server %s: list-change subscription ended (%s)", self.name, exc)

        watcher = asyncio.create_task(watch(), name=f"mcp server {self.name} list changes")

        async def stop_watching() -> None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

        stack.push_async_callback(stop_watching)


@contextlib.asynccontextmanager
async def _closing(transport: Any, http: httpx2.AsyncClient) -> Any:
    """The HTTP transport, then its client closed (the SDK leaves a client it was given open)."""
    try:
        async with transport as streams:
            yield streams
    finally:
        await http.aclose()


def _describe(exc: BaseException) -> str:
    """What went wrong, in a line: the innermost cause of an exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return f"MCP error {exc.error.code}: {exc.error.message}"
    if isinstance(exc, FileNotFoundError):
        return f"the command was not found ({exc.filename or exc})"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
