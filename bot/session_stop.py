"""Slack's native stop button on an agent session (`agent_session_stopped`): Cancel by
another name, under Cancel's own authority check.

The requester or an admin stops the order: `Conversations.cancel`, exactly as the Cancel
button (the run is cancelled, its reservation released, the thread told). Anyone else's stop
is refused: they are told why, and the session is set back to what the order is doing, since
Slack leaves the status to the app (docs.slack.dev, "agent_session_stopped")."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.agent_session import SESSION_OF, set_session
from bot.conversation import Conversations, control_refusal
from workers.config import Settings
from workers.dialogue import session_order_id
from workers.permissions import may_control
from workers.store import Store

log = logging.getLogger(__name__)

STOPPED_EVENT = "agent_session_stopped"


def register(
    app: AsyncApp, settings: Settings, *, store: Store, conversations: Conversations
) -> None:
    @app.event(STOPPED_EVENT)
    async def on_session_stopped(event: dict[str, Any], client: AsyncWebClient) -> None:
        channel, thread_ts = str(event.get("channel") or ""), str(event.get("thread_ts") or "")
        user = str(event.get("user") or "")
        session = await store.slack.intake_session(channel, thread_ts) if channel and thread_ts else None
        order_id = session_order_id(session) if session is not None else None
        if order_id is None or not user:
            log.info("a stop in a thread that holds no work order; nothing to stop")
            return
        order = await store.orders.get_order(order_id)
        if may_control(order, user, settings):
            await conversations.cancel(order_id, user=user, channel=channel)
            return
        log.info("refused a stop by someone who may not cancel", extra={"order": order_id})
        status = SESSION_OF.get(order.status)
        if status is not None:
            await set_session(client, order, status, force=True)
        try:
            await client.chat_postEphemeral(
                channel=channel, user=user, thread_ts=thread_ts, text=control_refusal(order, "stop")
            )
        except SlackApiError as exc:
            log.info("could not say so: %s", exc.response.get("error"))
