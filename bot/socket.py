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
from typing import Any

from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest

from bot.http_guard import check_envelope, check_interaction
from workers.config import SlackSettings

log = logging.getLogger(__name__)

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

    def __init__(self, app: AsyncApp, *, app_token: str, settings: SlackSettings) -> None:
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
        self.client.on_message_listeners.append(self._on_message)
        enqueue = self.client.enqueue_message

        async def enqueue_readable(message: str) -> None:
            problem = frame_problem(message)
            if problem is not None:
                log.info("ignored a malformed Socket Mode frame: %s", problem)
                return
            await enqueue(message)

        self.client.enqueue_message = enqueue_readable  # type: ignore[method-assign]

    async def _on_message(self, _message: Any) -> None:
        self._last_inbound = time.time()

    def silence_s(self) -> float:
        last_pong = self.client.last_ping_pong_time or 0.0
        return time.time() - max(self._last_inbound, last_pong)

    async def start(self) -> None:
        await self.handler.connect_async()
        self._last_inbound = time.time()
        self._watchdog = asyncio.create_task(self._watch(), name="socket-mode-watchdog")
        log.info("connected to Slack in Socket Mode")

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
                log.error("Socket Mode reconnect failed: %s", type(exc).__name__)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        await self.handler.close_async()
