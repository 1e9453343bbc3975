"""`/delegate`: help, list, status, cancel, or a new request."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.cards import STATE_LABELS, state_label
from bot.conversation import Conversations, Incoming
from bot.messages import HELP, unknown_command
from bot.mrkdwn import untrusted
from workers.config import Settings
from workers.errors import NotFound
from workers.permissions import may_control, may_view
from workers.states import OPEN, TERMINAL
from workers.store import Store
from workers.workorder import WorkOrder, format_order_id, parse_order_id

log = logging.getLogger(__name__)

# Where a bot cannot post, Slack says so with one of these; the request then moves to a DM.
_CANNOT_POST = {"not_in_channel", "channel_not_found", "is_archived", "restricted_action"}


class Commands:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        conversations: Conversations,
        client: AsyncWebClient,
    ) -> None:
        self.settings = settings
        self.store = store
        self.conversations = conversations
        self.client = client

    async def run(self, command: dict[str, Any], respond: AsyncRespond) -> None:
        text = (command.get("text") or "").strip()
        user, channel = command["user_id"], command["channel_id"]
        verb, _, rest = text.partition(" ")
        verb = verb.lower()
        if verb in ("", "help"):
            await respond(response_type="ephemeral", text=HELP)
        elif verb == "list":
            await respond(response_type="ephemeral", text=await self._list(user))
        elif verb in ("status", "cancel"):
            await respond(
                response_type="ephemeral",
                text=await self._on_order(verb, rest.strip(), user, channel),
            )
        elif not rest.strip():
            # One word that is no command (`/delegate frobnicate`) is a typo more often than a
            # request: answer privately instead of opening a public thread.
            await respond(response_type="ephemeral", text=unknown_command(text))
        else:
            await self._new_request(text, user=user, channel=channel, respond=respond)

    async def _list(self, user: str) -> str:
        orders = await self.store.orders.list_orders(requester=user, statuses=OPEN, limit=20)
        if not orders:
            return "You have no open work orders. Mention me or use `/delegate <request>` to start one."
        lines = [f"• *{o.id}* · {untrusted(o.title)} · {state_label(o)}" for o in orders]
        return "*Your open work orders*\n" + "\n".join(lines)

    async def _on_order(self, verb: str, ref: str, user: str, channel: str) -> str:
        if not ref:
            return f"Which order? Try `/delegate {verb} WO-42`."
        try:
            order_id = format_order_id(parse_order_id(ref))
        except ValueError as exc:
            return str(exc)
        # Someone else's order reads like a missing one: no state, no requester.
        unknown = f"{order_id} was not found, or is not yours."
        try:
            order = await self.store.orders.get_order(order_id)
        except NotFound:
            return unknown
        may = may_control if verb == "cancel" else may_view
        if not may(order, user, self.settings):
            return unknown
        if verb == "cancel":
            if order.status in TERMINAL:
                return f"{order.id} is already {STATE_LABELS[order.status].lower()}."
            cancelled = await self.conversations.cancel(order_id, user=user, channel=channel)
            return f"Cancelled {order_id}." if cancelled else f"{order_id} was not cancelled."
        return await self._status_text(order)

    async def _status_text(self, order: WorkOrder) -> str:
        assert order.id
        spend = await self.store.ledger.spend(order.id)
        return (
            f"*{order.id}* · {untrusted(order.title)}\n"
            f"State: *{state_label(order)}*\n"
            f"Spend: ${spend.spent_usd:.2f} of ${spend.max_usd:.2f} · "
            f"{spend.tool_calls} of {spend.max_tool_calls} tool calls · "
            f"{spend.tokens:,} of {spend.max_tokens:,} tokens"
        )

    async def _new_request(
        self, text: str, *, user: str, channel: str, respond: AsyncRespond
    ) -> None:
        posted = await self.open_thread(
            channel=channel, user=user, text=f"<@{user}> asked me: {untrusted(text)}"
        )
        if posted is None:
            await respond(
                response_type="ephemeral",
                text="I couldn't post anywhere to start this conversation.",
            )
            return
        root_channel, root_ts = posted
        if root_channel != channel:
            await respond(
                response_type="ephemeral",
                text="I'm not in this channel, so I've moved this to our direct messages.",
            )
        await self.conversations.handle(
            Incoming(
                channel=root_channel,
                thread_ts=root_ts,
                ts=root_ts,
                user=user,
                text=text,
                new_request=True,
            )
        )

    async def open_thread(self, *, channel: str, user: str, text: str) -> tuple[str, str] | None:
        """Post the message a new dialogue hangs off: in `channel`, else in a DM with `user`."""
        for target in dict.fromkeys([channel, user]):
            try:
                response = await self.client.chat_postMessage(channel=target, text=text)
            except SlackApiError as exc:
                error = exc.response.get("error")
                if error in _CANNOT_POST:
                    log.info("cannot post in %s (%s); trying a DM", target, error)
                    continue
                raise
            return str(response["channel"]), str(response["ts"])
        return None
