"""Review and exception decisions from Slack: the buttons on review prompts and exception
messages and their modals; authorised, atomic, and shown in place."""

from __future__ import annotations

import json
import logging
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.cards import mention
from bot.conversation import Conversations
from bot.ids import (
    APPROVE_ACTION,
    CHANGES_ACTION,
    CHANGES_CALLBACK,
    EXCEPTION_CANCEL_ACTION,
    EXTEND_ACTION,
    EXTEND_CALLBACK,
    EXTEND_CUSTOM_ACTION,
    REJECT_ACTION,
    RETRY_ACTION,
    parse_review_value,
)
from bot.modals import changes_modal, extend_modal, parse_extend
from bot.reporter import SlackReporter
from workers.config import Settings
from workers.errors import IllegalTransition, NotPermitted, OutdatedDecision
from workers.keys import result_key, review_key
from workers.permissions import may_handle_exception, may_review, reviewers_of
from workers.review import (
    Decision,
    ExceptionAction,
    decide,
    extended_budget,
    extension_refusal,
    handle_exception,
)
from workers.store import Store
from workers.workorder import WorkOrder

log = logging.getLogger(__name__)


class Decisions:
    """Reviewer decisions (approve, reject, request changes) and exception actions (extend,
    retry, cancel), each checked against `workers.permissions` and shown in the thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        client: AsyncWebClient,
        reporter: SlackReporter,
        conversations: Conversations,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.reporter = reporter
        self.conversations = conversations

    # Reviewer decisions

    async def decide(
        self,
        value: str,
        decision: Decision,
        *,
        user: str,
        feedback: str = "",
    ) -> str | None:
        """Record the decision; None on success, else why not (for an ephemeral or a field error).

        `value` is the clicked button's: the order and the deliverable the prompt (in the thread
        or App Home) showed. A click on a prompt for an earlier deliverable, or one that names
        none, is refused (checked under the lock that decides)."""
        order_id, shown = parse_review_value(value)
        order = await self.store.orders.get_order(order_id)
        if not may_review(order, user, self.settings):
            return reviewer_refusal(order)
        if shown is None:
            shown = -1  # a prompt without a version: not one we can vouch for
        try:
            await decide(
                self.store,
                self.settings,
                order_id,
                decision,
                actor=user,
                feedback=feedback,
                deliverable_id=shown,
            )
        except IllegalTransition:
            return f"{order.id} has already been decided."
        except OutdatedDecision as outdated:
            return await self.outdated_refusal(order, outdated.current)
        # The review prompt, the status message and the card show the decision through the
        # outbox (written with the decision, sent by the deliverer).
        return None

    async def precheck(self, value: str, *, user: str) -> str | None:
        """The cheap part of `decide` (reads only), to answer in a modal before its ack: why
        `user` cannot decide on this prompt, or None. `decide` checks again under the lock."""
        order_id, _ = parse_review_value(value)
        order = await self.store.orders.get_order(order_id)
        if not may_review(order, user, self.settings):
            return reviewer_refusal(order)
        return await self.check_current(value)

    async def check_current(self, value: str) -> str | None:
        """None if `value` names the order's latest deliverable, else the refusal (before a
        modal opens; the decision itself checks again under the lock)."""
        order_id, shown = parse_review_value(value)
        deliverables = await self.store.runs.deliverables(order_id)
        current = deliverables[-1].id if deliverables else None
        if shown == current:
            return None
        return await self.outdated_refusal(await self.store.orders.get_order(order_id), current)

    async def outdated_refusal(self, order: WorkOrder, current: int | None) -> str:
        """The prompt clicked shows an earlier deliverable: say so, and link the current one."""
        assert order.id
        where = "the latest review prompt in the thread"
        posted = (
            await self.store.slack.slack_message(review_key(result_key(order.id, current)))
            if current is not None
            else None
        )
        if posted is not None and posted.ts:
            try:
                response = await self.client.chat_getPermalink(
                    channel=posted.channel, message_ts=posted.ts
                )
                where = f"<{response['permalink']}|the current review prompt>"
            except SlackApiError as exc:
                log.info("chat.getPermalink failed: %s", exc.response.get("error"))
        return (
            f"This prompt shows an earlier version of {order.id}'s deliverable, so the click was "
            f"not counted. Decide on {where}."
        )

    # Exceptions

    async def act_on_exception(
        self,
        order_id: str,
        action: ExceptionAction,
        *,
        user: str,
        usd: float | None = None,
        minutes: int | None = None,
    ) -> str | None:
        """Extend, Retry or Cancel; None if done, else why not. The exception notice shows who
        did it through the outbox (the edit is written with the action, sent by the deliverer),
        as the status message does."""
        order = await self.store.orders.get_order(order_id)
        if not may_handle_exception(order, user, self.settings):
            return exception_refusal(order)
        try:
            await handle_exception(
                self.store, self.settings, order_id, action, actor=user, usd=usd, minutes=minutes
            )
        except IllegalTransition:
            return f"Someone already acted on {order.id}."
        except NotPermitted as refused:
            return str(refused)
        return None


def register(app: AsyncApp, decisions: Decisions) -> None:
    settings = decisions.settings

    async def refuse(client: AsyncWebClient, body: dict[str, Any], text: str) -> None:
        user = body["user"]["id"]
        if _from_a_view(body):
            # A click in App Home: no channel to be ephemeral in. Say it in the bot's DM, and
            # republish the home, whose buttons were evidently out of date.
            await client.chat_postMessage(channel=user, text=text)
            if decisions.reporter.home is not None:
                decisions.reporter.home.request(user)
            return
        channel = (body.get("channel") or {}).get("id") or user
        thread = (body.get("message") or {}).get("thread_ts")
        await client.chat_postEphemeral(channel=channel, user=user, text=text, thread_ts=thread)

    def decision_handler(decision: Decision) -> Any:
        async def on_decision(
            ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], client: AsyncWebClient
        ) -> None:
            await ack()
            problem = await decisions.decide(
                action["value"],
                decision,
                user=body["user"]["id"],
            )
            if problem:
                await refuse(client, body, problem)

        return on_decision

    app.action(APPROVE_ACTION)(decision_handler("approve"))
    app.action(REJECT_ACTION)(decision_handler("reject"))

    async def permitted(
        client: AsyncWebClient, body: dict[str, Any], action: dict[str, Any], may: Any, refusal: Any
    ) -> WorkOrder | None:
        """The clicked order if the user may act on it; otherwise say why not."""
        order = await decisions.store.orders.get_order(parse_review_value(action["value"])[0])
        if may(order, body["user"]["id"], settings):
            return order
        await refuse(client, body, refusal(order))
        return None

    @app.action(CHANGES_ACTION)
    async def on_changes(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], client: AsyncWebClient
    ) -> None:
        await ack()
        order = await permitted(client, body, action, may_review, reviewer_refusal)
        if order is None:
            return
        from_home = _from_a_view(body)
        outdated = await decisions.check_current(action["value"])
        if outdated:
            await refuse(client, body, outdated)
            return
        await client.views_open(
            trigger_id=body["trigger_id"],
            view=changes_modal(order, value=action["value"], from_home=from_home),
        )

    @app.view(CHANGES_CALLBACK)
    async def on_changes_submitted(
        ack: AsyncAck, body: dict[str, Any], view: dict[str, Any], client: AsyncWebClient
    ) -> None:
        metadata = json.loads(view.get("private_metadata") or "{}")
        feedback = str(
            view["state"]["values"].get("feedback", {}).get("feedback", {}).get("value") or ""
        ).strip()
        if not feedback:
            await ack(
                response_action="errors",
                errors={"feedback": "Say what should change, so the rework can address it."},
            )
            return
        value = str(metadata.get("value") or metadata.get("order_id"))
        user = body["user"]["id"]
        # Quick reads answer in the modal; the decision and the thread updates come after the
        # ack, which Slack wants within 3 s.
        problem = await decisions.precheck(value, user=user)
        if problem:
            await ack(response_action="errors", errors={"feedback": problem})
            return
        await ack()
        problem = await decisions.decide(
            value,
            "changes",
            user=user,
            feedback=feedback,
        )
        if problem:  # decided meanwhile by someone else, or a newer deliverable arrived
            await refuse(client, body, problem)

    async def on_exception_action(
        action_name: ExceptionAction,
        ack: AsyncAck,
        body: dict[str, Any],
        action: dict[str, Any],
        client: AsyncWebClient,
    ) -> None:
        await ack()
        problem = await decisions.act_on_exception(
            action["value"], action_name, user=body["user"]["id"]
        )
        if problem:
            await refuse(client, body, problem)

    def exception_handler(name: ExceptionAction) -> Any:
        async def handler(
            ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], client: AsyncWebClient
        ) -> None:
            await on_exception_action(name, ack, body, action, client)

        return handler

    app.action(EXTEND_ACTION)(exception_handler("extend"))
    app.action(RETRY_ACTION)(exception_handler("retry"))
    app.action(EXCEPTION_CANCEL_ACTION)(exception_handler("cancel"))

    @app.action(EXTEND_CUSTOM_ACTION)
    async def on_extend_custom(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], client: AsyncWebClient
    ) -> None:
        await ack()
        order = await permitted(client, body, action, may_handle_exception, exception_refusal)
        if order is None:
            return
        metadata = {"order_id": order.id}
        await client.views_open(
            trigger_id=body["trigger_id"],
            view=extend_modal(order, metadata, factor=settings.review.extend_factor),
        )

    @app.view(EXTEND_CALLBACK)
    async def on_extend_submitted(
        ack: AsyncAck, body: dict[str, Any], view: dict[str, Any], client: AsyncWebClient
    ) -> None:
        metadata = json.loads(view.get("private_metadata") or "{}")
        order = await decisions.store.orders.get_order(str(metadata.get("order_id")))
        values = view["state"]["values"]
        usd, minutes, errors = parse_extend(values, order, max_usd=settings.max_order_usd)
        if errors:
            await ack(response_action="errors", errors=errors)
            return
        user = body["user"]["id"]
        extended = extended_budget(
            order.budget, factor=settings.review.extend_factor, usd=usd, minutes=minutes
        )
        refusal = (
            exception_refusal(order)
            if not may_handle_exception(order, user, settings)
            else extension_refusal(order, extended, actor=user, settings=settings)
        )
        if refusal:
            await ack(response_action="errors", errors={"usd": refusal})
            return
        await ack()  # the extension and the thread updates come after Slack has its answer
        problem = await decisions.act_on_exception(
            str(order.id), "extend", user=body["user"]["id"], usd=usd, minutes=minutes
        )
        if problem:
            await refuse(client, body, problem)


def reviewer_refusal(order: WorkOrder) -> str:
    who = ", ".join(mention(r) for r in reviewers_of(order))
    return f"Only the reviewer ({who}) can decide {order.id}."


def exception_refusal(order: WorkOrder) -> str:
    return (
        f"Only {mention(order.requester)}, {mention(order.escalation_contact)} or an admin "
        f"can act on {order.id}."
    )


def _from_a_view(body: dict[str, Any]) -> bool:
    """A click in App Home (or a modal) rather than on a message."""
    return "view" in body or (body.get("container") or {}).get("type") == "view"
