"""Drop repeated deliveries of the same Slack event, across every bot process.

Slack redelivers an event when it did not see a fast 200 (HTTP `X-Slack-Retry-Num`, Socket Mode
`retry_attempt`); two processes may also both receive one event. The event id is recorded in
the database under a unique key, so exactly one delivery wins whichever process gets it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from workers.store import Store

log = logging.getLogger(__name__)


def delivery_key(body: dict[str, Any]) -> str | None:
    """The id that identifies an Events API delivery, or None for other kinds of request."""
    if body.get("type") == "event_callback":
        event_id = body.get("event_id")
        return str(event_id) if event_id else None
    return None


def dedupe_middleware(store: Store) -> Callable[..., Awaitable[BoltResponse | None]]:
    async def dedupe(
        req: AsyncBoltRequest,
        context: AsyncBoltContext,
        next: Callable[[], Awaitable[BoltResponse]],
    ) -> BoltResponse | None:
        key = delivery_key(req.body)
        if key is not None:
            kind = str(req.body.get("event", {}).get("type", ""))
            if not await store.mark_event_seen(key, kind=kind):
                log.info("duplicate delivery dropped event_id=%s kind=%s", key, kind)
                return BoltResponse(status=200, body="")
        return await next()

    return dedupe
