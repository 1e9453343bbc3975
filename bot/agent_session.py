"""An order's thread as a Slack agent session: `processing` while a run works, `suspended`
while it waits on a person, `closed` when the order ends (docs.slack.dev, "Agent sessions").

Only apps declared as agents may create sessions, and a workspace may predate them: Slack's
refusal (`missing_scope`, `unknown_method`, ...) turns the agent surface off for this process
and workspace, remembered so it is not asked again, and the thread stays as it always was (the
status message edited in place). The session status rides on the order's status row
(bot.reporter sets it while delivering it), so it is as durable as that row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from workers.errors import RetryLater
from workers.workorder import Status, WorkOrder

log = logging.getLogger(__name__)

PROCESSING, SUSPENDED, CLOSED = "processing", "suspended", "closed"
SESSION_OF: dict[Status, str] = {
    Status.QUEUED: PROCESSING,
    Status.RUNNING: PROCESSING,
    Status.VERIFYING: PROCESSING,
    Status.CHANGES_REQUESTED: PROCESSING,
    Status.WAITING_FOR_REQUESTER: SUSPENDED,
    Status.AWAITING_REVIEW: SUSPENDED,
    Status.EXCEPTION: SUSPENDED,
    Status.APPROVED: CLOSED,
    Status.REJECTED: CLOSED,
    Status.CANCELLED: CLOSED,
}
TITLE_MAX = 200

REFUSALS = frozenset(
    {
        "missing_scope",  # not declared an agent (no assistant:write)
        "not_allowed_token_type",
        "unknown_method",  # a workspace or API version without the method
        "method_deprecated",
        "feature_not_enabled",
        "not_supported",
        "not_allowed",
        "access_denied",
    }
)
"""Slack's answers that mean "not for this app or workspace": no retry changes them."""

SESSIONS, STREAMS = "sessions", "streams"


@dataclass
class Surface:
    """What this process knows of one Slack client's workspace (kept as long as the client)."""

    refused: set[str] = field(default_factory=set)
    confirmed: bool = False
    """A session status was accepted: only then does a run stream its plan (an app not
    declared an agent keeps its status message, even while Slack cannot be asked)."""
    shown: dict[tuple[str, str], str] = field(default_factory=dict)
    """Each thread's session status as last set, so a delivery that does not change it costs
    no call."""
    sent: dict[str, dict[str, str]] = field(default_factory=dict)
    """Each stream's task statuses as sent (bot.live_plan), so an append carries what changed."""
    team_id: str | None = None


_SURFACES: WeakKeyDictionary[AsyncWebClient, Surface] = WeakKeyDictionary()
_SHOWN_MAX = 10_000


def surface(client: AsyncWebClient) -> Surface:
    """Per process and client (a process keeps its clients): what Slack refused and accepted."""
    known = _SURFACES.get(client)
    if known is None:
        known = _SURFACES[client] = Surface()
    return known


def offered(client: AsyncWebClient, feature: str) -> bool:
    """Whether Slack has not refused `feature` (SESSIONS, STREAMS) to this client yet."""
    return feature not in surface(client).refused


def confirmed(client: AsyncWebClient) -> bool:
    """Whether this workspace has accepted a session status from this client."""
    return surface(client).confirmed and offered(client, SESSIONS)


def refused(client: AsyncWebClient, feature: str, error: str) -> None:
    if offered(client, feature):
        log.info("Slack refused the agent %s (%s): the thread keeps its status message", feature, error)
    surface(client).refused.add(feature)


def is_refusal(exc: SlackApiError) -> bool:
    return str(exc.response.get("error") or "") in REFUSALS


def retry_later(exc: SlackApiError) -> RetryLater | None:
    """A 429 or a 5xx: the status row goes round again (everything it does is idempotent)."""
    status = exc.response.status_code
    if status == 429:
        headers = exc.response.headers
        return RetryLater(float(headers.get("Retry-After", headers.get("retry-after", 5)) or 5))
    if status >= 500:
        return RetryLater(5.0, f"Slack answered {status}")
    return None


def remember(client: AsyncWebClient, order: WorkOrder, status: str) -> None:
    """`status` is the session's status now (set by chat.stopStream's `session_status`)."""
    known = surface(client)
    known.confirmed = True
    if len(known.shown) > _SHOWN_MAX:
        known.shown.clear()
    known.shown[(order.channel or "", order.thread_ts or "")] = status


async def set_session(
    client: AsyncWebClient, order: WorkOrder, status: str, *, force: bool = False
) -> bool | None:
    """Set the order's thread's session to `status` (creating it, titled with the order's
    title): True when it is set, False when Slack does not offer sessions here, None when
    Slack could not be asked just now (a 429, a 5xx, a timeout: the caller tries again later,
    after showing the rest). `force` sets it even if this process set the same status last (a
    stop button press, which Slack does not undo by itself)."""
    if not (order.channel and order.thread_ts) or not offered(client, SESSIONS):
        return False
    if not force and surface(client).shown.get((order.channel, order.thread_ts)) == status:
        return True
    try:
        await client.agents_sessions_setStatus(
            channel_id=order.channel,
            thread_ts=order.thread_ts,
            status=status,
            title=(order.title or order.id or "Work order")[:TITLE_MAX],
            initiator_user_id=order.requester,
        )
    except SlackApiError as exc:
        if is_refusal(exc):
            refused(client, SESSIONS, str(exc.response.get("error")))
            return False
        if retry_later(exc) is not None:
            return None
        # Anything else (a thread Slack does not take as a session): the thread keeps its
        # status message; the next status tries again.
        log.warning("agents.sessions.setStatus failed: %s", exc.response.get("error"))
        return False
    except Exception as exc:  # timeouts, dropped connections: not this status's business
        log.info("agents.sessions.setStatus did not answer (%s)", type(exc).__name__)
        return None
    remember(client, order, status)
    return True
