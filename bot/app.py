"""The Bolt app: every listener Delegate registers with Slack, wired to the engine.

Listeners acknowledge first and work afterwards: Bolt sends the HTTP response (or the Socket
Mode envelope ack) as soon as `ack()` runs, and events are acknowledged before their listener
starts. Only the dedupe record is written before the ack.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot import approvals, decisions, feedback, home, session_stop
from bot.commands import Commands
from bot.conversation import Conversations, Incoming, control_refusal
from bot.dedupe import REPLAY, dedupe_middleware, first_delivery, handled
from bot.home_refresh import HomeRefresher
from bot.ids import (
    CANCEL_ACTION,
    COMMAND,
    EDIT_ACTION,
    EDIT_CALLBACK,
    INTAKE_CALLBACK,
    NEW_ORDER_ACTION,
    SHORTCUT_DELEGATE_THIS,
    START_ACTION,
)
from bot.messages import HELP
from bot.modals import edit_modal, intake_modal, intake_request, parse_edit
from bot.mrkdwn import untrusted
from bot.reporter import SlackReporter
from bot.shapes import ShapeMiddleware
from bot.slack_client import AUTH_ERRORS
from bot.unfurls import OrderLinks, only_order_refs, order_numbers
from bot.welcome import welcome
from workers import intake_replies
from workers.config import Settings
from workers.errors import NotFound, OrderMoved
from workers.intake import Completer, IntakeEngine
from workers.permissions import may_control
from workers.states import EDITABLE
from workers.store import Store

log = logging.getLogger(__name__)

# Message subtypes that are still a person writing something new.
_PLAIN_SUBTYPES = (None, "file_share", "thread_broadcast")
_LEADING_MENTION = re.compile(r"^\s*<@[UW][A-Z0-9]+(?:\|[^>]*)?>[\s,:]*")


def create_app(
    settings: Settings,
    *,
    store: Store,
    client: AsyncWebClient,
    completer: Completer,
    homes: HomeRefresher | None = None,
    on_token_revoked: Callable[[str], Awaitable[None]] | None = None,
) -> AsyncApp:
    """Build the Bolt app with its listeners; the caller chooses HTTP or Socket Mode.

    `homes` republishes App Homes (share one per process with the worker's reporter);
    `on_token_revoked` is told when Slack says the app was uninstalled or its bot token revoked
    (bot.token_watch)."""
    secret = (
        settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None
    )
    app = AsyncApp(
        # Named: without a name Bolt reads the caller's file name off inspect.stack(), which
        # costs a fifth of a second per app (every start, every test bot).
        name="delegate",
        client=client,
        signing_secret=secret,
        # Socket Mode requests are not signed; HTTP requests always are.
        request_verification_enabled=secret is not None,
        ignoring_self_events_enabled=True,
    )
    app.use(ShapeMiddleware())
    app.use(dedupe_middleware(store, defer=_channel_chatter))

    @app.error
    async def on_error(
        error: Exception, body: dict[str, Any], client: AsyncWebClient
    ) -> BoltResponse | None:
        if isinstance(error, SlackApiError) and error.response.get("error") in AUTH_ERRORS:
            # bot.token_watch has said so, once, with the fix.
            log.info("a Slack listener stopped: the bot token is refused")
            return None
        if not isinstance(error, NotFound | ValueError):
            log.error("a Slack listener failed: %r", error, exc_info=error)
            return None
        # A click or submission about an order that does not exist: say so, no traceback.
        text = str(error) if isinstance(error, NotFound) else "That is not a work order I know."
        log.info("refused a Slack request: %s", error)
        if body.get("type") == "view_submission":
            blocks = list(body["view"].get("state", {}).get("values", {})) or ["request"]
            answer = {"response_action": "errors", "errors": {blocks[0]: text}}
            return BoltResponse(status=200, body=json.dumps(answer))
        if body.get("type") == "block_actions":
            try:
                await client.chat_postEphemeral(
                    channel=_channel_of(body), user=body["user"]["id"], text=text
                )
            except SlackApiError as exc:
                log.info("could not say so: %s", exc.response.get("error"))
        return None

    conversations = Conversations(
        settings, store=store, engine=IntakeEngine(settings, completer), client=client
    )
    publisher = home.HomePublisher(settings, store=store, client=client)
    links = OrderLinks(settings, store=store, client=client)
    homes = homes or HomeRefresher(publisher.refresh)
    commands = Commands(settings, store=store, conversations=conversations, client=client)
    decisions.register(
        app,
        decisions.Decisions(
            settings,
            store=store,
            client=client,
            reporter=SlackReporter(store=store, client=client, home=homes, settings=settings),
            conversations=conversations,
        ),
    )

    approvals.register(app, approvals.Approvals(settings, store=store))
    feedback.register(app, feedback.FeedbackPresses(settings, store=store))
    session_stop.register(app, settings, store=store, conversations=conversations)

    @app.event("app_mention")
    async def on_mention(
        event: dict[str, Any], body: dict[str, Any], say: Any, client: AsyncWebClient
    ) -> None:
        try:
            root = event.get("thread_ts") or event["ts"]
            if root != event["ts"] and not await store.slack.thread_messages(event["channel"], root):
                await _backfill(store, client, event["channel"], root)
            await _remember(store, event)
            text = strip_mention(event.get("text") or "")
            if not text:
                await say(text=HELP, thread_ts=root)
                return
            if only_order_refs(text):  # "@Delegate WO-42": show it, do not start an intake
                await links.answer_mentions(event)
                return
            await conversations.handle(
                Incoming(
                    channel=event["channel"],
                    thread_ts=root,
                    ts=event["ts"],
                    user=event["user"],
                    text=text,
                    new_request=True,
                )
            )
        finally:
            await handled(store, body)

    @app.event("message")
    async def on_message(
        event: dict[str, Any], body: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        # Chatter is recorded (and so must be marked handled) only once it is acted on below.
        recorded = bool(context.get(REPLAY)) or not _channel_chatter(body, context)
        try:
            if event.get("subtype") == "message_deleted":
                # Deleted in Slack: the stored copy goes too (a no-op for a message never kept).
                if event.get("channel") and event.get("deleted_ts"):
                    await store.slack.forget_thread_message(event["channel"], event["deleted_ts"])
                return
            if event.get("subtype") == "message_changed":
                # Edited in Slack: a run reading its thread must see the words as they are now.
                changed = event.get("message")
                if event.get("channel") and isinstance(changed, dict) and changed.get("ts"):
                    text = changed.get("text")
                    await store.slack.edit_thread_message(
                        event["channel"], str(changed["ts"]), text if isinstance(text, str) else ""
                    )
                return
            if _from_a_bot(event) and settings.engine.ignore_bot_messages:
                return
            if event.get("subtype") not in _PLAIN_SUBTYPES or not event.get("user"):
                return
            text = event.get("text") or ""
            is_dm = event.get("channel_type") == "im"
            if not recorded:
                # Only threads Delegate takes part in (an intake dialogue) are kept and acted
                # on; other chatter costs one read and no write.
                thread_ts = event.get("thread_ts")
                if not thread_ts or await store.slack.intake_session(event["channel"], thread_ts) is None:
                    if order_numbers(text) and await first_delivery(store, body):
                        recorded = True
                        await links.answer_mentions(event)
                    return
                if not await first_delivery(store, body):
                    return
                recorded = True
            await _remember(store, event)
            if not is_dm and _addresses(event, context.bot_user_id):
                return  # the app_mention listener handles it
            if is_dm and not event.get("thread_ts") and only_order_refs(text):
                await links.answer_mentions(event)
                return
            await conversations.handle(
                Incoming(
                    channel=event["channel"],
                    thread_ts=event.get("thread_ts") or event["ts"],
                    ts=event["ts"],
                    user=event["user"],
                    text=strip_mention(text),
                    new_request=is_dm and not event.get("thread_ts"),
                )
            )
        finally:
            if recorded:
                await handled(store, body)

    @app.event("link_shared")
    async def on_link_shared(event: dict[str, Any]) -> None:
        await links.unfurl(event)

    @app.event("app_uninstalled")
    async def on_uninstalled(event: dict[str, Any]) -> None:
        # Slack has revoked every token of the app: nothing more can be sent.
        if on_token_revoked is not None:
            await on_token_revoked("app_uninstalled")

    @app.event("tokens_revoked")
    async def on_tokens_revoked(event: dict[str, Any]) -> None:
        if not (event.get("tokens") or {}).get("bot"):
            log.info("user tokens revoked; the bot token is not among them")
        elif on_token_revoked is not None:
            await on_token_revoked("tokens_revoked")

    @app.event("app_home_opened")
    async def on_home_opened(event: dict[str, Any], client: AsyncWebClient) -> None:
        if event.get("tab") == "messages" and event.get("channel") and event.get("user"):
            await welcome(store, client, user=event["user"], channel=event["channel"])
            return
        if event.get("tab") != "home":
            return
        await publisher.opened(event["user"])
        homes.request(event["user"])

    @app.command(COMMAND)
    async def on_command(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        await commands.run(command, respond)

    @app.shortcut(SHORTCUT_DELEGATE_THIS)
    async def on_delegate_this(
        ack: AsyncAck, shortcut: dict[str, Any], client: AsyncWebClient
    ) -> None:
        await ack()
        message = shortcut.get("message", {})
        channel = shortcut["channel"]["id"]
        permalink = ""
        try:
            response = await client.chat_getPermalink(channel=channel, message_ts=message["ts"])
            permalink = str(response.get("permalink", ""))
        except SlackApiError as exc:
            log.info("chat.getPermalink failed: %s", exc.response.get("error"))
        metadata = {
            "channel": channel,
            "permalink": permalink,
            "author": message.get("user", ""),
            "source": (message.get("text") or "")[:1500],
        }
        await client.views_open(
            trigger_id=shortcut["trigger_id"],
            view=intake_modal(initial_text=message.get("text") or "", metadata=metadata),
        )

    @app.action(NEW_ORDER_ACTION)
    async def on_new_order(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        await client.views_open(trigger_id=body["trigger_id"], view=intake_modal(metadata={}))

    @app.view(INTAKE_CALLBACK)
    async def on_intake_submitted(
        ack: AsyncAck, body: dict[str, Any], view: dict[str, Any], client: AsyncWebClient
    ) -> None:
        request = intake_request(view["state"]["values"])
        if not request:
            await ack(response_action="errors", errors={"request": "Tell me what should be done."})
            return
        await ack()
        user = body["user"]["id"]
        metadata = json.loads(view.get("private_metadata") or "{}")
        channel = metadata.get("channel") or user  # App Home: the conversation moves to the DM
        context_text = ""
        if metadata.get("source"):
            link = (
                f"<{metadata['permalink']}|this message>"
                if metadata.get("permalink")
                else "this message"
            )
            context_text = f"From {link} by <@{metadata.get('author')}>:\n{metadata['source']}"
        intro = (
            f"<@{user}> is delegating {link}."
            if context_text
            else f"<@{user}> asked me: {untrusted(request)}"
        )
        posted = await commands.open_thread(channel=channel, user=user, text=intro)
        if posted is None:
            return
        root_channel, root_ts = posted
        await conversations.handle(
            Incoming(
                channel=root_channel,
                thread_ts=root_ts,
                ts=root_ts,
                user=user,
                text=request,
                new_request=True,
                context=context_text,
            )
        )

    @app.action(START_ACTION)
    async def on_start(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        await conversations.start(
            action["value"], user=body["user"]["id"], channel=_channel_of(body)
        )

    @app.action(CANCEL_ACTION)
    async def on_cancel(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        await conversations.cancel(
            action["value"], user=body["user"]["id"], channel=_channel_of(body)
        )

    @app.action(EDIT_ACTION)
    async def on_edit(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], client: AsyncWebClient
    ) -> None:
        await ack()
        user = body["user"]["id"]
        order = await store.orders.get_order(action["value"])
        if not may_control(order, user, settings):
            await client.chat_postEphemeral(
                channel=_channel_of(body),
                user=user,
                thread_ts=order.thread_ts,
                text=control_refusal(order, "edit"),
            )
            return
        tz = await conversations.user_tz(user)
        await client.views_open(
            trigger_id=body["trigger_id"],
            view=edit_modal(order, settings, metadata={"order_id": order.id, "tz": tz}, user=user),
        )

    @app.view(EDIT_CALLBACK)
    async def on_edit_submitted(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        user = body["user"]["id"]
        metadata = json.loads(view.get("private_metadata") or "{}")
        try:
            order = await store.orders.get_order(str(metadata.get("order_id", "")))
        except (NotFound, ValueError):
            await ack(
                response_action="errors", errors={"title": "This work order no longer exists."}
            )
            return
        if not may_control(order, user, settings):
            await ack(
                response_action="errors",
                errors={"title": control_refusal(order, "edit")},
            )
            return
        if order.status not in EDITABLE:
            await ack(
                response_action="errors",
                errors={"title": _no_longer_editable(order.id or "")},
            )
            return
        result = parse_edit(
            view["state"]["values"],
            order,
            settings,
            tz=str(metadata.get("tz", "UTC")),
            now=datetime.now(UTC),
            user=user,
        )
        if result.errors:
            await ack(response_action="errors", errors=result.errors)
            return
        assert order.id
        try:
            # Written before the ack, so that a Start landing since the read above is refused
            # in the modal itself (the write checks the state under the row lock).
            # The card is redrawn by the deliverer, from a row written with the change.
            await store.orders.update_order(
                order.id,
                actor=user,
                expected=EDITABLE,
                reason="edited in Slack",
                outbox=[intake_replies.card(order.id, uuid.uuid4().hex[:12], edited_by=user)],
                **result.changes,
            )
        except OrderMoved:
            await ack(response_action="errors", errors={"title": _no_longer_editable(order.id)})
            return
        await ack()

    return app


def _no_longer_editable(order_id: str) -> str:
    return f"{order_id} has already started; Edit is no longer possible."


def strip_mention(text: str) -> str:
    return _LEADING_MENTION.sub("", text).strip()


def _channel_of(body: dict[str, Any]) -> str:
    return str(
        (body.get("channel") or {}).get("id")
        or (body.get("container") or {}).get("channel_id")
        or body["user"]["id"]
    )


def _from_a_bot(event: dict[str, Any]) -> bool:
    return bool(event.get("bot_id")) or event.get("subtype") == "bot_message"


def _addresses(event: dict[str, Any], bot_user_id: str | None) -> bool:
    return bool(bot_user_id) and f"<@{bot_user_id}" in (event.get("text") or "")


def _channel_chatter(body: dict[str, Any], context: AsyncBoltContext) -> bool:
    """A message in a channel (not a DM) that does not mention the bot: Delegate acts on it
    only in a thread it takes part in, which `on_message` checks (and dedupes) itself."""
    event = body.get("event")
    return (
        body.get("type") == "event_callback"
        and isinstance(event, dict)
        and event.get("type") == "message"
        and event.get("channel_type") != "im"
        and not _addresses(event, context.bot_user_id)
    )


async def _backfill(store: Store, client: AsyncWebClient, channel: str, thread_ts: str) -> None:
    """The messages of a thread Delegate is first mentioned in, written before it was there."""
    try:
        response = await client.conversations_replies(channel=channel, ts=thread_ts, limit=200)
    except SlackApiError as exc:
        log.info("conversations.replies failed: %s", exc.response.get("error"))
        return
    for message in response.get("messages") or []:
        if isinstance(message, dict) and isinstance(message.get("ts"), str):
            await _remember(store, {**message, "channel": channel, "thread_ts": thread_ts})


async def _remember(store: Store, event: dict[str, Any]) -> None:
    """Keep the messages of threads Delegate takes part in (and its DMs), so a run can read its
    thread without history calls."""
    ts = event.get("ts")
    channel = event.get("channel")
    if not ts or not channel:
        return
    await store.slack.record_thread_message(
        channel=channel,
        thread_ts=event.get("thread_ts") or ts,
        ts=ts,
        text=event.get("text") or "",
        user=event.get("user"),
        bot_id=event.get("bot_id"),
        files=_attached(event),
    )


def _attached(event: dict[str, Any]) -> list[dict[str, Any]] | None:
    """What Slack says is attached to a message (ids, names, types, sizes; never the bytes):
    a run granted read_file may read what its requester attached."""
    listed = event.get("files")
    if not isinstance(listed, list):  # anything but Slack's list of file objects: none
        return None
    files = [
        {
            "id": f["id"],
            "name": str(f.get("name") or f.get("title") or f["id"])[:200],
            "mimetype": str(f.get("mimetype") or ""),
            "size": _size(f.get("size")),
        }
        for f in listed
        if isinstance(f, dict) and isinstance(f.get("id"), str)
    ]
    return files or None


def _size(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
