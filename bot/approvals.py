"""Answers to a run's request to read a domain outside its allowlist: the three buttons on the
prompt (workers.tools.web asks, bot.domain_blocks shows it). Only the requester, the escalation
contact or an admin may answer; the answer is recorded once (a second click changes nothing),
audited, and requeues the parked run."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.blocks import Block
from bot.cards import STATE_LABELS, mention
from bot.domain_blocks import answered_line
from bot.ids import DOMAIN_DENY_ACTION, DOMAIN_ONCE_ACTION, DOMAIN_ORDER_ACTION
from bot.mrkdwn import untrusted
from bot.review_blocks import decided_blocks
from workers.config import Settings
from workers.permissions import may_decide_domain
from workers.states import TERMINAL
from workers.store import Store
from workers.store.approvals import DomainDecision
from workers.tools.suffixes import is_public_suffix
from workers.workorder import WorkOrder

log = logging.getLogger(__name__)


class DomainApprovals:
    def __init__(self, settings: Settings, *, store: Store) -> None:
        self.settings = settings
        self.store = store

    async def answer(
        self, value: str, decision: DomainDecision, *, user: str
    ) -> tuple[bool, str, WorkOrder | None]:
        """(recorded, the line to show, the order): the line says who answered what, or why
        this answer was not taken."""
        if not value.isascii() or not value.isdigit() or len(value) > 18:
            return False, "That is not a request I know.", None
        approval = await self.store.get_domain_approval(int(value))
        order = await self.store.get_order(approval.order_id)
        host = untrusted(approval.host)
        if not may_decide_domain(order, user, self.settings):
            return False, domain_refusal(order, host), None
        if decision == "order" and is_public_suffix(approval.host):
            # Allowing a public suffix with its subdomains would allow every stranger's site.
            return False, f"`{host}` is a public suffix: it can only be allowed once.", None
        if approval.decision is None and order.status in TERMINAL:
            return False, f"{order.id} is {STATE_LABELS[order.status].lower()} already.", None
        decided = await self.store.decide_domain_approval(approval.id or 0, decision, actor=user)
        done = decided.approval
        assert done.decision is not None and done.decided_by is not None
        line = answered_line(done.decision, done.host, done.decided_by)
        if not decided.recorded:
            return False, f"Already answered: {line}.", decided.order
        return True, line, decided.order


def domain_refusal(order: WorkOrder, host: str) -> str:
    people = ", ".join(
        mention(p) for p in dict.fromkeys([order.requester, order.escalation_contact]) if p
    )
    return f"Only {people} or an admin can allow {order.id} to read `{host}`."


def register(app: AsyncApp, approvals: DomainApprovals) -> None:
    def handler(decision: DomainDecision) -> Any:
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
            if not recorded:
                if channel:
                    await client.chat_postEphemeral(
                        channel=channel, user=user, text=line, thread_ts=message.get("thread_ts")
                    )
                return
            if channel and message.get("ts"):
                blocks: list[Block] = message.get("blocks") or []
                try:
                    await client.chat_update(
                        channel=channel,
                        ts=message["ts"],
                        text=line,
                        blocks=decided_blocks(blocks, line=line),
                    )
                except SlackApiError as exc:
                    log.info("could not update the request: %s", exc.response.get("error"))

        return on_answer

    app.action(DOMAIN_ONCE_ACTION)(handler("once"))
    app.action(DOMAIN_ORDER_ACTION)(handler("order"))
    app.action(DOMAIN_DENY_ACTION)(handler("deny"))
