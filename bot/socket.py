"""Socket Mode: Slack pushes requests over a WebSocket instead of calling our HTTP endpoint."""

from __future__ import annotations

import logging

from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp

log = logging.getLogger(__name__)


async def start_socket_mode(app: AsyncApp, *, app_token: str) -> AsyncSocketModeHandler:
    handler = AsyncSocketModeHandler(app, app_token=app_token, web_client=app.client)
    await handler.connect_async()
    log.info("connected to Slack in Socket Mode")
    return handler
