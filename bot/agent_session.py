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

# Per process: what each workspace (its API URL and token) refused, and each thread's session
# status as last set, so a status delivery that does not change it costs no call.
_REFUSED: dict[tuple[str, str], set[str]] = {}
_SHOWN: dict[tuple[str, str, str, str], str] = {}
_SHOWN_MAX = 10_000


def _workspace(client: AsyncWebClient) -> tuple[str, str]:
    return (str(client.base_url), str(client.token or ""))


def offered(client: AsyncWebClient, feature: str) -> bool:
    """Whether Slack has not refused `feature` (SESSIONS, STREAMS) to this process yet."""
    return feature not in _REFUSED.get(_workspace(client), set())


def refused(client: AsyncWebClient, feature: str, error: str) -> None:
    if offered(client, feature):
        log.info("Slack refused the agent %s (%s): the thread keeps its status message", feature, error)
    _REFUSED.setdefault(_workspace(client), set()).add(feature)


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
    if len(_SHOWN) > _SHOWN_MAX:
        _SHOWN.clear()
    _SHOWN[(*_workspace(client), order.channel or "", order.thread_ts or "")] = status


async def set_session(
    client: AsyncWebClient, order: WorkOrder, status: str, *, force: bool = False
) -> bool:
    """Set the order's thread's session to `status` (creating it, titled with the order's
    title); False when Slack does not offer sessions here. `force` sets it even if this process
    set the same status last (a stop button press Slack does not undo by itself)."""
    if not (order.channel and order.thread_ts) or not offered(client, SESSIONS):
        return False
    key = (*_workspace(client), order.channel, order.thread_ts)
    if not force and _SHOWN.get(key) == status:
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
        later = retry_later(exc)
        if later is not None:
            raise later from exc
        # Anything else (a thread Slack does not know as a session): the thread keeps its
        # status message; the next status tries again.
        log.warning("agents.sessions.setStatus failed: %s", exc.response.get("error"))
        return False
    remember(client, order, status)
    return True
