"""The Bolt app: every listener Delegate registers with Slack, wired to the engine."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from bot import home
from bot.dedupe import dedupe_middleware
from bot.messages import HELP
from workers.config import Settings
from workers.store import Store

log = logging.getLogger(__name__)

COMMAND = "/delegate"
SHORTCUT_DELEGATE_THIS = "delegate_this"


def create_app(settings: Settings, *, store: Store, client: AsyncWebClient) -> AsyncApp:
    """Build the Bolt app with its listeners; the caller chooses HTTP or Socket Mode."""
    secret = (
        settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None
    )
    app = AsyncApp(
        client=client,
        signing_secret=secret,
        # Socket Mode requests are not signed; HTTP requests always are.
        request_verification_enabled=secret is not None,
        ignoring_self_events_enabled=True,
    )
    app.use(dedupe_middleware(store))

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], say: Any) -> None:
        await _remember(store, event)
        await say(text=HELP, thread_ts=event.get("thread_ts") or event["ts"])

    @app.event("message")
    async def on_message(event: dict[str, Any], say: Any) -> None:
        if _from_a_bot(event) and settings.engine.ignore_bot_messages:
            return
        if event.get("subtype") not in (None, "file_share", "thread_broadcast"):
            return
        await _remember(store, event)
        if event.get("channel_type") == "im" and not event.get("thread_ts"):
            await say(text=HELP, thread_ts=event["ts"])

    @app.event("app_home_opened")
    async def on_home_opened(event: dict[str, Any], client: AsyncWebClient) -> None:
        if event.get("tab") != "home":
            return
        await client.views_publish(user_id=event["user"], view=home.home_view())

    @app.command(COMMAND)
    async def on_command(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        await respond(response_type="ephemeral", text=HELP)

    @app.shortcut(SHORTCUT_DELEGATE_THIS)
    async def on_delegate_this(
        ack: AsyncAck, shortcut: dict[str, Any], client: AsyncWebClient
    ) -> None:
        await ack()

    @app.action(home.NEW_ORDER_ACTION)
    async def on_new_order(ack: AsyncAck) -> None:
        await ack()

    return app


def _from_a_bot(event: dict[str, Any]) -> bool:
    return bool(event.get("bot_id")) or event.get("subtype") == "bot_message"


async def _remember(store: Store, event: dict[str, Any]) -> None:
    """Keep every message the bot sees, so a run can read its thread without history calls."""
    ts = event.get("ts")
    channel = event.get("channel")
    if not ts or not channel:
        return
    await store.record_thread_message(
        channel=channel,
        thread_ts=event.get("thread_ts") or ts,
        ts=ts,
        text=event.get("text") or "",
        user=event.get("user"),
        bot_id=event.get("bot_id"),
    )
