"""Socket Mode: Slack pushes requests over a WebSocket instead of calling our HTTP endpoint.

slack_sdk reconnects when the socket closes or its own pings fail, but a connection can also
go quietly dead (a proxy keeps it open, nothing arrives). The watchdog here recreates the
connection when neither inbound traffic nor a ping reply has been seen for a while.

Frames the SDK cannot read (not JSON, or an envelope whose payload is not an object) are dropped
with one log line before it sees them; it would log a traceback for each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError

from bot.doctor import APP_TOKEN_FIX
from bot.http_guard import check_envelope, check_interaction
from bot.slack_client import AUTH_ERRORS
from workers.config import SlackSettings

log = logging.getLogger(__name__)

CONNECT_BACKOFF_S = 1.0
CONNECT_BACKOFF_MAX_S = 60.0
CLOSE_TIMEOUT_S = 5.0

WATCHDOG_RECONNECT = (
    "Socket Mode: no inbound traffic and no ping reply for %.0f s; recreating the connection"
)


def frame_problem(raw: str) -> str | None:
    """Why the SDK cannot process this text frame, or None. It skips text that does not start
    with `{` by itself, parses the rest as JSON and reads an envelope's type, id and payload."""
    if not raw.startswith("{"):
        return None
    try:
        message = json.loads(raw)
    except ValueError:
        return "not JSON"
    if not isinstance(message, dict):
        return "not a JSON object"
    if all(k in message for k in ("type", "envelope_id", "payload")):
        if not isinstance(message["type"], str) or not isinstance(message["envelope_id"], str):
            return "the envelope's type or id is not a string"
        if not isinstance(message["payload"], dict):
            return "the envelope's payload is not an object"
        # The same shape rules as an HTTP request (bot.http_guard). Bolt reads the payload's own
        # type, whatever the envelope says, so both are checked.
        payload = message["payload"]
        refusal = None
        if message["type"] == "events_api" or payload.get("type") == "event_callback":
            refusal = check_envelope(payload)
        elif message["type"] == "interactive":
            refusal = check_interaction(payload)
        if refusal is not None:
            return refusal.reason
        try:
            # Bolt reads team, user, channel and authorizations while parsing; odd types raise
            # there, before any listener or middleware could refuse them (cf. bot.server).
            AsyncBoltRequest(body=message["payload"], mode="socket_mode")
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            return f"Bolt cannot read its payload ({type(exc).__name__})"
    return None


class SocketModeRunner:
    """A Socket Mode connection with a watchdog task."""

    def __init__(
        self,
        app: AsyncApp,
        *,
        app_token: str,
        settings: SlackSettings,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        """`on_refused` is told, once, when Slack refuses the app token: no retry fixes that."""
        self.handler = AsyncSocketModeHandler(
            app,
            app_token=app_token,
            web_client=app.client,
            ping_interval=settings.socket_ping_interval_s,
        )
        self.client = self.handler.client
        self.watchdog_s = settings.socket_watchdog_s
        self.reconnects = 0
        self._last_inbound = time.time()
        self._watchdog: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[None] | None = None
        self.problem: str | None = None
        """Why the last connection attempt failed (None once connected)."""
        self.on_refused = on_refused
        self.client.on_message_listeners.append(self._on_message)
        enqueue = self.client.enqueue_message

        async def enqueue_readable(message: str) -> None:
            problem = frame_problem(message)
            if problem is not None:
                log.info("ignored a malformed Socket Mode frame: %s", problem)
                return
            await enqueue(message)

        self.client.enqueue_message = enqueue_readable  # type: ignore[method-assign]
        self._gave_up = False

        async def issue_new_wss_url() -> str:
            # The SDK's own logs each refusal as an ERROR and its callers log it again, on
            # every retry; a refused token is said once, here, and not retried.
            try:
                response = await self.client.web_client.apps_connections_open(
                    app_token=self.client.app_token
                )
            except Exception as exc:
                self._refused(exc)
                raise
            return str(response["url"])

        self.client.issue_new_wss_url = issue_new_wss_url  # type: ignore[method-assign]

    async def _on_message(self, _message: Any) -> None:
        self._last_inbound = time.time()

    def silence_s(self) -> float:
        last_pong = self.client.last_ping_pong_time or 0.0
        return time.time() - max(self._last_inbound, last_pong)

    async def start(self) -> None:
        """Connect in the background, retrying with back-off: a refused app token or an
        unreachable Slack must hold up neither the rest of the process nor its shutdown
        (`status` says what is wrong, and /healthz with it)."""
        self._connecting = asyncio.create_task(self._connect(), name="socket-mode-connect")

    async def _connect(self) -> None:
        delay = CONNECT_BACKOFF_S
        while True:
            try:
                # Asked here first: the SDK's own connect retries a refused token or an
                # unreachable Slack for ever, logging a traceback each time and telling no one.
                self.client.wss_uri = await self.client.issue_new_wss_url()
                await self.handler.connect_async()
                break
            except Exception as exc:
                self.problem = _describe(exc)
                if self._refused(exc):
                    return
                log.error(
                    "Socket Mode: could not connect to Slack (%s); trying again in %.0f s",
                    self.problem,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, CONNECT_BACKOFF_MAX_S)
        self.problem = None
        self._last_inbound = time.time()
        self._watchdog = asyncio.create_task(self._watch(), name="socket-mode-watchdog")
        log.info("connected to Slack in Socket Mode")

    async def status(self) -> tuple[bool, str]:
        """(healthy, what to say): 'connected', or 'not connected: why'."""
        if self.problem is None and await self.client.is_connected():
            return True, "connected"
        return False, f"not connected: {self.problem or 'connecting'}"

    async def _watch(self) -> None:
        interval = min(5.0, self.watchdog_s / 4)
        while True:
            await asyncio.sleep(interval)
            silence = self.silence_s()
            if silence < self.watchdog_s:
                continue
            log.warning(WATCHDOG_RECONNECT, silence)
            self.reconnects += 1
            self._last_inbound = time.time()
            try:
                await self.client.connect_to_new_endpoint(force=True)
            except Exception as exc:  # keep watching: the next round tries again
                if self._refused(exc):
                    return
                log.error("Socket Mode reconnect failed: %s", type(exc).__name__)

    def _refused(self, exc: Exception) -> bool:
        """Whether Slack refused the app token; if so, say it once and tell `on_refused`."""
        if not isinstance(exc, SlackApiError) or exc.response.get("error") not in AUTH_ERRORS:
            return False
        if self._gave_up:
            return True
        self._gave_up = True
        message = (
            f"Slack refused SLACK_APP_TOKEN ({exc.response.get('error')}); fix: {APP_TOKEN_FIX}"
        )
        log.error("Socket Mode: %s", message)
        if self.on_refused is not None:
            self.on_refused(message)
        return True

    async def close(self) -> None:
        """Stop connecting, watching and listening; never waits long on a Slack that does not
        answer."""
        for task in (self._connecting, self._watchdog):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.handler.close_async()
        except Exception as exc:  # shutting down regardless
            log.warning("Socket Mode: closing the connection failed (%s)", type(exc).__name__)


def _describe(exc: Exception) -> str:
    """What went wrong, in words that carry no token (Slack's error code, or the failure type)."""
    if isinstance(exc, SlackApiError):
        return f"Slack refused: {exc.response.get('error') or exc.response.status_code}"
    return f"Slack unreachable ({type(exc).__name__})"
