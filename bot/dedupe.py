"""Drop repeated deliveries of the same Slack event, and replays of signed requests.

Slack redelivers an event when it did not see a fast 200 (HTTP `X-Slack-Retry-Num`, Socket Mode
`retry_attempt`); two processes may also both receive one event. The event id is recorded in
the database under a unique key, so exactly one delivery wins whichever process gets it.

Slash commands and interactions have no event id and are never retried by Slack, but a captured
request stays validly signed for Slack's 5-minute window. Its signature (an HMAC over the
timestamp and the body) identifies it exactly, so a replay is dropped the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from workers.store import Store

log = logging.getLogger(__name__)


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
    if key is None or await store.mark_event_seen(key, kind="message"):
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
        key = delivery_key(req.body, req.headers)
        if key is not None and not (defer is not None and defer(req.body, context)):
            event = req.body.get("event")
            kind = str(event.get("type", "")) if isinstance(event, dict) else "request"
            if not await store.mark_event_seen(key, kind=kind):
                log.info("duplicate delivery dropped event_id=%s kind=%s", key, kind)
                return BoltResponse(status=200, body="")
        return await next()

    return dedupe
