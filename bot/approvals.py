"""Answers to a run's request to make a tool call (one its policy asks about, or web_fetch
outside its allowlist): the three buttons on the prompt (bot.approval_blocks and
bot.domain_blocks show it). Only the policy's approvers or an admin may answer, checked here on
every click; the answer is recorded once (a second click changes nothing), audited, requeues the
parked run and writes the edit that shows it on the prompt, all in one transaction
(workers.store.approvals). The prompt changes through the delivery road, never here."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_sdk.web.async_client import AsyncWebClient

from bot.approval_blocks import decided_line
from bot.cards import STATE_LABELS, mention
from bot.ids import (
    APPROVAL_DENY_ACTION,
    APPROVAL_ONCE_ACTION,
    APPROVAL_ORDER_ACTION,
    DOMAIN_DENY_ACTION,
    DOMAIN_ONCE_ACTION,
    DOMAIN_ORDER_ACTION,
)
from bot.mrkdwn import untrusted
from workers.config import Settings
from workers.errors import NotFound
from workers.permissions import approvers_of, may_approve
from workers.progress import ApprovalRequest
from workers.states import TERMINAL
from workers.store import Store
from workers.store.approvals import Decision
from workers.tools.suffixes import is_public_suffix
from workers.workorder import WorkOrder

log = logging.getLogger(__name__)


class Approvals:
    def __init__(self, settings: Settings, *, store: Store) -> None:
        self.settings = settings
        self.store = store

    async def answer(
        self, value: str, decision: Decision, *, user: str
    ) -> tuple[bool, str, WorkOrder | None]:
        """(recorded, the line to show, the order): the line says who answered what, or why
        this answer was not taken."""
        if not value.isascii() or not value.isdigit() or len(value) > 18:
            return False, "That is not a request I know.", None
        try:
            approval = await self.store.approvals.get_approval(int(value))
        except NotFound:
            return False, "That is not a request I know.", None
        order = await self.store.orders.get_order(approval.order_id)
        if not may_approve(order, user, self.settings):
            return False, self.refusal(order, ApprovalRequest.of(approval)), None
        if approval.kind == "domain" and decision == "order" and is_public_suffix(approval.host):
            # Allowing a public suffix with its subdomains would allow every stranger's site.
            host = untrusted(approval.host)
            return False, f"`{host}` is a public suffix: it can only be allowed once.", None
        if approval.decision is None and order.status in TERMINAL:
            return False, f"{order.id} is {STATE_LABELS[order.status].lower()} already.", None
        decided = await self.store.approvals.decide_approval(approval.id or 0, decision, actor=user)
        line = decided_line(ApprovalRequest.of(decided.approval))
        if not decided.recorded:
            return False, f"Already answered: {line}.", decided.order
        return True, line, decided.order

    def refusal(self, order: WorkOrder, request: ApprovalRequest) -> str:
        people = ", ".join(mention(p) for p in approvers_of(order, self.settings))
        who = f"{people} or an admin" if people else "An admin"
        if request.kind == "domain":
            return f"Only {who} can allow {order.id} to read `{untrusted(request.host)}`."
        tool = untrusted(request.tool_name)
        return f"Only {who} can answer {order.id}'s request to call `{tool}`."


def register(app: AsyncApp, approvals: Approvals) -> None:
    def handler(decision: Decision) -> Any:
        async def on_answer(
            ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], client: AsyncWebClient
        ) -> None:
            await ack()
            user = body["user"]["id"]
            recorded, line, _order = await approvals.answer(
                str(action.get("value") or ""), decision, user=user
            )
            channel = (body.get("channel") or {}).get("id")
            message = body.get("message") or {}
            if not recorded and channel:
                await client.chat_postEphemeral(
                    channel=channel, user=user, text=line, thread_ts=message.get("thread_ts")
                )
            # A recorded answer is shown on the prompt by the edit its transaction wrote.

        return on_answer

    for once, order, deny in (
        (DOMAIN_ONCE_ACTION, DOMAIN_ORDER_ACTION, DOMAIN_DENY_ACTION),
        (APPROVAL_ONCE_ACTION, APPROVAL_ORDER_ACTION, APPROVAL_DENY_ACTION),
    ):
        app.action(once)(handler("once"))
        app.action(order)(handler("order"))
        app.action(deny)(handler("deny"))
