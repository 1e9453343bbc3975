"""Drop repeated deliveries of the same Slack event, and replays of signed requests.

Slack redelivers an event when it did not see a fast 200 (HTTP `X-Slack-Retry-Num`, Socket Mode
`retry_attempt`); two processes may also both receive one event. The event id is recorded in
the database under a unique key, so exactly one delivery wins whichever process gets it.

A process can die after the ack while it is still handling a delivery (Slack does not resend what
was acknowledged). The deliveries Delegate acts on (mentions, messages) are therefore recorded
with their body and count as unhandled until their listener has finished (`handled`); a sweep
(`recover_unhandled`) replays those left unfinished for longer than any listener takes. A replay
is not signed by Slack, so the stored body carries a MAC under the audit key (checked by the
store) and only event callbacks are replayed, never interactions.

Slash commands and interactions have no event id and are never retried by Slack, but a captured
request stays validly signed for Slack's 5-minute window. Its signature (an HMAC over the
timestamp and the body) identifies it exactly, so a replay is dropped the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from workers.models import utcnow
from workers.store import Store

log = logging.getLogger(__name__)

RECOVERABLE = frozenset({"app_mention", "message"})
"""Event types whose listeners start work (intake): kept until handled, replayed if dropped."""

REPLAY = "delegate_replay"
"""Context flag of a delivery replayed from the database (already recorded, not signed)."""

RECOVER_AFTER = timedelta(minutes=5)
"""A delivery unhandled this long was dropped by a dying process (a listener takes seconds)."""

MAX_ATTEMPTS = 3


def delivery_key(body: dict[str, Any], headers: Mapping[str, Sequence[str]]) -> str | None:
    """What identifies this delivery: the event id of an Events API callback, the signature of
    a signed command or interaction; None when nothing does (e.g. Socket Mode frames)."""
    if body.get("type") == "event_callback":
        event_id = body.get("event_id")
        return str(event_id) if event_id else None
    signature = headers.get("x-slack-signature") or ()
    if signature and signature[0]:
        return "sig:" + signature[0].removeprefix("v0=")
    return None


async def first_delivery(store: Store, body: dict[str, Any]) -> bool:
    """Record an Events API delivery now (for events the middleware was told to `defer`); False
    if it was seen before and must be dropped."""
    key = delivery_key(body, {})
    if key is None or await store.slack.mark_event_seen(key, kind="message", body=body):
        return True
    log.info("duplicate delivery dropped event_id=%s kind=message", key)
    return False


def dedupe_middleware(
    store: Store,
    *,
    defer: Callable[[dict[str, Any], AsyncBoltContext], bool] | None = None,
) -> Callable[..., Awaitable[BoltResponse | None]]:
    """`defer(body, context)` names the deliveries whose listener dedupes them itself with
    `first_delivery`, only once it knows it will act on them: ignored chatter then costs no
    database write before the ack."""

    async def dedupe(
        req: AsyncBoltRequest,
        context: AsyncBoltContext,
        next: Callable[[], Awaitable[BoltResponse]],
    ) -> BoltResponse | None:
        if req.context.get(REPLAY):
            return await next()
        key = delivery_key(req.body, req.headers)
        if key is not None and not (defer is not None and defer(req.body, context)):
            event = req.body.get("event")
            kind = str(event.get("type", "")) if isinstance(event, dict) else "request"
            keep = req.body if kind in RECOVERABLE else None
            if not await store.slack.mark_event_seen(key, kind=kind, body=keep):
                log.info("duplicate delivery dropped event_id=%s kind=%s", key, kind)
                return BoltResponse(status=200, body="")
        return await next()

    return dedupe


async def handled(store: Store, body: dict[str, Any]) -> None:
    """The listener is done with this delivery (however it ended, short of the process dying)."""
    key = delivery_key(body, {})
    if key is not None:
        await store.slack.event_handled(key)


def replayable(body: dict[str, Any]) -> bool:
    """Only event callbacks of the kinds kept for recovery are replayed: an interaction (a
    button click, a modal, a shortcut, a slash command) acts for the user who sent it, so it is
    never acted on again from storage, however it got there."""
    event = body.get("event")
    return (
        body.get("type") == "event_callback"
        and isinstance(event, dict)
        and event.get("type") in RECOVERABLE
    )


async def recover_unhandled(
    app: AsyncApp, store: Store, *, older_than: timedelta = RECOVER_AFTER
) -> int:
    """Replay the deliveries a dead process left unhandled through the app's listeners; how
    many were replayed. Safe on every process at once: each delivery is taken by one."""
    taken = await store.slack.claim_unhandled_events(
        started_before=utcnow() - older_than, max_attempts=MAX_ATTEMPTS
    )
    replayed = 0
    for event_id, body in taken:
        if not replayable(body):
            # Only Delegate stores bodies, and only of events; anything else is not replayed.
            log.warning(
                "a stored Slack delivery is not an event: not replayed event_id=%s", event_id
            )
            await store.slack.event_handled(event_id)
            continue
        log.warning("replaying a Slack delivery left unhandled event_id=%s", event_id)
        # Socket Mode requests are not signature-checked: this one comes from our database.
        request = AsyncBoltRequest(
            body=json.dumps(body), mode="socket_mode", context={REPLAY: True}
        )
        replayed += 1
        try:
            await app.async_dispatch(request)
        except Exception:
            log.exception("replaying event_id=%s failed", event_id)
    return replayed
