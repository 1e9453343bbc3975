"""Work orders as things Slack can show.

- A link to an order (`slack.order_links` + `WO-42`) unfurls through `chat.unfurl`: a Work
  Object task entity (title, state, spend, reviewer, deadline), with a compact Block Kit card
  beside it for workspaces where Work Objects are not enabled. Slack shows an unfurl to everyone
  in the conversation, so the details are given only where the order lives (its own channel);
  anywhere else the card says no more than the order's id and state.
- A `WO-42` typed in a message is answered with the same compact card, visible only to the
  person who typed it (an ephemeral message: no noise, no pings, nothing shown to others), and
  only when they may see the order or are in its own channel.
- `GET /orders/WO-42` on Delegate's HTTP port sends a browser to the order's Slack thread, so a
  shared order link leads somewhere.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import urlsplit

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.blocks import Block, context, mrkdwn, truncate
from bot.cards import state_label
from bot.home import WorkspaceUrl, thread_url
from bot.mrkdwn import mention, untrusted
from workers.config import Settings
from workers.digest import money
from workers.errors import NotFound
from workers.permissions import may_view
from workers.store import Store, row_to_order
from workers.workorder import WorkOrder, format_order_id

log = logging.getLogger(__name__)

ORDER_REF = re.compile(r"(?<![\w-])WO-(\d{1,9})(?!\w)")
MAX_REFS = 3  # cards answered for one message, however many ids it names
TASK_ENTITY = "slack#/entities/task"
# Errors that mean Slack would not take the Work Object: send the card alone instead.
_NO_WORK_OBJECTS = {"invalid_metadata", "invalid_metadata_format", "invalid_unfurl_metadata"}


def order_numbers(text: str) -> list[int]:
    """The distinct orders a message names, in order, at most MAX_REFS."""
    seen: list[int] = []
    for match in ORDER_REF.finditer(text):
        number = int(match.group(1))
        if number not in seen:
            seen.append(number)
    return seen[:MAX_REFS]


def only_order_refs(text: str) -> bool:
    """`WO-42`, `WO-42?`, `WO-7, WO-9`: a message that names orders and says nothing else."""
    return bool(ORDER_REF.search(text)) and not ORDER_REF.sub("", text).strip(" ,.;:?!&\n\t")


def link_base(settings: Settings) -> str | None:
    base = settings.slack.order_links
    return base.rstrip("/") + "/" if base else None


def order_link(settings: Settings, order_id: str) -> str | None:
    base = link_base(settings)
    return f"{base}{order_id}" if base else None


def linked_order(settings: Settings, url: str) -> int | None:
    """The order a shared link points at, if it is one of ours (`<base>WO-42`, any query)."""
    base = link_base(settings)
    if base is None or not url.startswith(base):
        return None
    rest = urlsplit(url[len(base) :]).path.strip("/")
    match = re.fullmatch(r"WO-(\d{1,9})", rest)
    return int(match.group(1)) if match else None


def compact_card(order: WorkOrder, spent_micro: int, link: str | None) -> list[Block]:
    """Title, state, spend, reviewer and a link: the order at a glance."""
    label = f"<{link}|{order.id}>" if link else f"{order.id}"
    reviewers = ", ".join(mention(u) for u in order.verification.reviewers) or "the requester"
    return [
        {
            "type": "section",
            "text": mrkdwn(f"*{label}* · {truncate(untrusted(order.title), 200)}"),
        },
        context(
            f"{state_label(order)} · spent {money(spent_micro)} of "
            f"${order.budget.max_usd:,.2f} · reviewer {reviewers} · "
            f"requested by {mention(order.requester)}"
        ),
    ]


def restricted_card(order: WorkOrder) -> list[Block]:
    """What an unfurl outside the order's channel may say: its id and state, nothing more."""
    return [context(f"*{order.id}* · {state_label(order)} · details are shown in its own channel")]


def task_entity(order: WorkOrder, spent_micro: int, *, url: str, shared_url: str) -> dict[str, Any]:
    """The order as a Work Object task entity (docs.slack.dev/messaging/work-objects)."""
    fields: dict[str, Any] = {
        "status": {"value": state_label(order)},
        "assignee": {"type": "slack#/types/user", "user": {"user_id": order.requester}},
    }
    if order.deadline is not None:
        fields["due_date"] = {"type": "slack#/types/timestamp", "value": int(order.deadline.timestamp())}
    custom: list[dict[str, Any]] = [
        {
            "key": "spend",
            "label": "Spend",
            "type": "string",
            "value": f"{money(spent_micro)} of ${order.budget.max_usd:,.2f}",
        }
    ]
    if order.verification.reviewers:
        custom.append(
            {
                "key": "reviewer",
                "label": "Reviewer",
                "type": "slack#/types/user",
                "user": {"user_id": order.verification.reviewers[0]},
            }
        )
    return {
        "entity_type": TASK_ENTITY,
        "external_ref": {"id": order.id or "", "type": "work_order"},
        "url": url,
        "app_unfurl_url": shared_url,
        "entity_payload": {
            "attributes": {
                "title": {"text": truncate(order.title, 200)},
                "display_id": order.id,
                "product_name": "Delegate",
            },
            "fields": fields,
            "custom_fields": custom,
        },
    }


class OrderLinks:
    """Unfurls, `WO-42` mentions and the order-link redirect, over the store and Slack."""

    def __init__(self, settings: Settings, *, store: Store, client: AsyncWebClient) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self._workspace = WorkspaceUrl(client)

    async def team_url(self) -> str | None:
        return await self._workspace.get()

    async def _order(self, number: int) -> tuple[WorkOrder, int] | None:
        try:
            row = await self.store.orders.get_row(number)
        except NotFound:
            return None
        return row_to_order(row), int(row.spent_micro_usd or 0)

    async def thread_of(self, ref: str) -> str | None:
        """Where `GET /orders/<ref>` sends a browser: the order's thread, if there is one."""
        match = re.fullmatch(r"WO-(\d{1,9})", ref)
        found = await self._order(int(match.group(1))) if match else None
        return thread_url(await self.team_url(), found[0]) if found else None

    async def unfurl(self, event: dict[str, Any]) -> None:
        """Answer a `link_shared` event for the links that are Delegate's orders."""
        channel = event.get("channel")
        unfurls: dict[str, dict[str, Any]] = {}
        entities: list[dict[str, Any]] = []
        for link in event.get("links") or []:
            url = link.get("url") if isinstance(link, dict) else None
            number = linked_order(self.settings, url) if isinstance(url, str) else None
            found = await self._order(number) if number is not None else None
            if found is None or not isinstance(url, str):
                continue
            order, spent = found
            if order.channel != channel:
                unfurls[url] = {"blocks": restricted_card(order)}
                continue
            target = thread_url(await self.team_url(), order) or url
            unfurls[url] = {"blocks": compact_card(order, spent, target)}
            entities.append(task_entity(order, spent, url=target, shared_url=url))
        if not unfurls:
            return
        where: dict[str, Any]
        if event.get("unfurl_id") and event.get("source"):
            where = {"unfurl_id": event["unfurl_id"], "source": event["source"]}
        else:
            where = {"channel": channel, "ts": event.get("message_ts")}
        try:
            await self.client.chat_unfurl(
                **where, unfurls=unfurls, metadata={"entities": entities} if entities else None
            )
        except SlackApiError as exc:
            if not entities or exc.response.get("error") not in _NO_WORK_OBJECTS:
                raise
            log.info("Slack refused the Work Object (%s); unfurling the card alone", exc.response)
            await self.client.chat_unfurl(**where, unfurls=unfurls)

    async def answer_mentions(self, event: dict[str, Any]) -> None:
        """Show the person who typed `WO-42` that order's card, privately."""
        user, channel = event.get("user"), event.get("channel")
        if not (isinstance(user, str) and isinstance(channel, str)):
            return
        thread = event.get("thread_ts")
        blocks: list[Block] = []
        numbers = order_numbers(str(event.get("text") or ""))
        for number in numbers:
            found = await self._order(number)
            if found is None:
                continue
            order, spent = found
            if order.channel == channel and order.thread_ts == thread:
                continue  # said in the order's own thread: its card is right there
            if order.channel != channel and not may_view(order, user, self.settings):
                continue
            blocks += compact_card(order, spent, thread_url(await self.team_url(), order))
        if not blocks:
            return
        names = ", ".join(format_order_id(n) for n in numbers)
        await self.client.chat_postEphemeral(
            channel=channel,
            user=user,
            text=f"Work orders mentioned: {names}",
            blocks=blocks,
            **({"thread_ts": thread} if thread else {}),
        )
