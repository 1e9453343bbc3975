"""A run's progress streamed into its thread as a live plan (chat.startStream in `plan` mode,
a `task_update` per step, chat.stopStream with the final state and its buttons).

The plan rides on the order's status row (workers.store.outbox `merge_plan`): each delivery of
that row brings the whole plan as it stands, so a coalesced status loses no step and a restart
sends what is missing again (a `task_update` with a known id updates that task, it does not add
one). The stream of each run is a Slack message recorded under its own key like any post:

- started: claimed before the call, its ts saved after; the status message then points at it,
  so once stopped it is edited in place as the status message always was.
- a start whose answer was lost (timeout, 5xx) cannot be looked up (a stream carries no
  metadata until it stops), so that run's plan goes on the edited status message instead of a
  second stream (`LOST`).
- stopped once: recorded under `<key>:stopped`; a stop repeated after a restart gets
  `message_not_in_streaming_state` and the status message is edited instead (same content).
- refused (an app that is not an agent, a workspace without streaming): off for the process
  (bot.agent_session), and the status message is edited as before.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.agent_session import (
    SESSIONS,
    STREAMS,
    confirmed,
    is_refusal,
    offered,
    refused,
    remember,
    retry_later,
    surface,
)
from bot.blocks import Block, cap_blocks, sections
from bot.mrkdwn import untrusted
from workers.errors import Busy, RetryLater
from workers.keys import status_key
from workers.store import Store
from workers.store.outbox import RUN
from workers.workorder import WorkOrder

log = logging.getLogger(__name__)

LOST = "-"
"""The ts recorded for a stream whose start may or may not have happened."""
CLAIM_S = 60.0
SENT_MAX = 10_000
BUSY_RETRY_S = 5.0



def stream_key(order_id: str, stream: int) -> str:
    return f"{status_key(order_id)}:stream:{stream}"


def task_chunks(tasks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`task_update` chunks; a task's title is a step's words (a model's choice of page, a
    tool's error): shown inert."""
    return [
        {
            "type": "task_update",
            "id": str(t["id"]),
            "title": untrusted(str(t["title"])) or "…",
            "status": str(t["status"]),
        }
        for t in tasks
    ]


class LivePlan:
    def __init__(self, *, store: Store, client: AsyncWebClient, owner: str) -> None:
        self.store = store
        self.client = client
        self.owner = owner

    def _sent(self, ts: str) -> dict[str, str]:
        """What this process sent the stream `ts` (lost with the process: a restart sends the
        whole plan once; a task_update with a known id only updates that task)."""
        sent = surface(self.client).sent
        if ts not in sent and len(sent) > SENT_MAX:
            sent.clear()  # forgetting costs one resend of a plan, never a wrong one
        return sent.setdefault(ts, {})

    async def show(
        self,
        order: WorkOrder,
        plan: Mapping[str, Any],
        *,
        blocks: list[Block],
        session_status: str,
    ) -> bool:
        """Show the plan in the run's stream; False when the status message should show it
        instead (no run streamed yet, streaming refused, the stream lost or already stopped)."""
        stream = int(plan.get("stream") or 0)
        if not (confirmed(self.client) and offered(self.client, STREAMS)):
            return False
        if stream == 0 or not (order.id and order.channel and order.thread_ts):
            return False
        key = stream_key(order.id, stream)
        record = await self.store.slack.slack_message(key)
        if record is not None and record.ts == LOST:
            return False
        if await self.store.slack.slack_message(f"{key}:stopped") is not None:
            return False
        tasks = list(plan.get("plan") or [])
        if plan.get("phase") == RUN:
            ts = record.ts if record is not None and record.ts else None
            if ts is None:
                ts = await self._start(order, key, tasks)
                if ts is None:
                    return False
            elif not await self._append(order, key, ts, tasks):
                return False
            await self._point_status_at(order, ts)
            return True
        if record is None or not record.ts:
            return False  # this run never streamed: its status message shows the rest
        return await self._stop(order, key, record.ts, tasks, blocks, session_status)

    async def _start(
        self, order: WorkOrder, key: str, tasks: list[dict[str, Any]]
    ) -> str | None:
        assert order.id and order.channel and order.thread_ts
        state, existing = await self.store.slack.claim_slack_message(
            key=key,
            purpose="stream",
            channel=order.channel,
            owner=self.owner,
            order=order.id,
            claim_s=CLAIM_S,
        )
        if state == "posted":
            return existing.ts
        if state == "busy":
            raise Busy(BUSY_RETRY_S, f"another process is starting {key}")
        if state == "retaken":
            await self._lose(order, key, "its start may have happened")
            return None
        recipient: dict[str, str] = {}
        if not order.channel.startswith("D"):  # streaming in a channel names its reader
            recipient = {
                "recipient_user_id": order.requester,
                "recipient_team_id": await self._team(),
            }
        try:
            response = await self.client.chat_startStream(
                channel=order.channel,
                thread_ts=order.thread_ts,
                task_display_mode="plan",
                chunks=[
                    {"type": "plan_update", "title": f"{order.id}: the plan"},
                    *task_chunks(tasks),
                ],
                **recipient,
            )
        except SlackApiError as exc:
            if exc.response.status_code >= 500:
                await self.store.slack.uncertain_slack_message(key, self.owner)
                raise RetryLater(5.0, "chat.startStream answered a server error") from exc
            await self.store.slack.release_slack_message(key, self.owner)
            if is_refusal(exc):
                refused(self.client, STREAMS, str(exc.response.get("error")))
                return None
            later = retry_later(exc)
            if later is not None:
                raise later from exc
            log.warning("chat.startStream refused: %s", exc.response.get("error"))
            await self._lose(order, key, str(exc.response.get("error")))
            return None
        except BaseException:
            await self.store.slack.uncertain_slack_message(key, self.owner)
            raise
        ts = str(response["ts"])
        await self.store.slack.save_slack_message(
            key=key, purpose="stream", channel=order.channel, ts=ts, order=order.id
        )
        self._sent(ts).update({str(t["id"]): str(t["status"]) for t in tasks})
        return ts

    async def _append(
        self, order: WorkOrder, key: str, ts: str, tasks: list[dict[str, Any]]
    ) -> bool:
        assert order.channel
        sent = self._sent(ts)
        changed = [t for t in tasks if sent.get(str(t["id"])) != t["status"]]
        if not changed:
            return True
        try:
            await self.client.chat_appendStream(
                channel=order.channel, ts=ts, chunks=task_chunks(changed)
            )
        except SlackApiError as exc:
            if await self._ended(order, key, exc):
                return False
            # Refused as it is (no retry changes that): the next step sends these tasks again.
            log.warning("chat.appendStream refused: %s", exc.response.get("error"))
            return True
        sent.update({str(t["id"]): str(t["status"]) for t in changed})
        return True

    async def _stop(
        self,
        order: WorkOrder,
        key: str,
        ts: str,
        tasks: list[dict[str, Any]],
        blocks: list[Block],
        session_status: str,
    ) -> bool:
        assert order.channel
        extra: dict[str, Any] = {}
        if offered(self.client, SESSIONS):
            extra["session_status"] = session_status
        try:
            await self.client.chat_stopStream(
                channel=order.channel,
                ts=ts,
                chunks=task_chunks(tasks),
                blocks=cap_blocks(blocks),  # whatever is cut, never the buttons
                **extra,
            )
        except SlackApiError as exc:
            if await self._ended(order, key, exc):
                return False
            # The final content refused as it is: stop the stream bare, and the status message
            # edit shows the final state instead.
            log.warning("chat.stopStream refused: %s", exc.response.get("error"))
            await self.client.chat_stopStream(channel=order.channel, ts=ts)
            await self._stopped(order, key, ts)
            return False
        await self._stopped(order, key, ts)
        if extra:
            remember(self.client, order, session_status)
        return True

    async def _ended(self, order: WorkOrder, key: str, exc: SlackApiError) -> bool:
        """The stream is no longer live (stopped by a person's stop button, by Slack, or by
        a stop whose answer was lost): from now on the status message is edited instead."""
        error = exc.response.get("error")
        if error == "message_not_in_streaming_state":
            record = await self.store.slack.slack_message(key)
            await self._stopped(order, key, record.ts if record and record.ts else LOST)
            return True
        if error == "message_not_found":
            await self._lose(order, key, "its message is gone")
            return True
        later = retry_later(exc)
        if later is not None:
            raise later from exc
        return False

    async def _stopped(self, order: WorkOrder, key: str, ts: str) -> None:
        assert order.id and order.channel
        await self.store.slack.save_slack_message(
            key=f"{key}:stopped", purpose="stream", channel=order.channel, ts=ts, order=order.id
        )

    async def _lose(self, order: WorkOrder, key: str, why: str) -> None:
        assert order.id and order.channel
        log.info("the live plan goes on the status message (%s)", why, extra={"order": order.id})
        await self.store.slack.save_slack_message(
            key=key, purpose="stream", channel=order.channel, ts=LOST, order=order.id
        )

    async def _point_status_at(self, order: WorkOrder, ts: str) -> None:
        """The run's stream is the order's status message from now on (edited in place once
        stopped); saving it also touches the record the quiet-order sweep reads."""
        assert order.id and order.channel
        key = status_key(order.id)
        before = await self.store.slack.slack_message(key)
        if before is not None and before.ts and before.ts != ts:
            # The status message of before the run (queued) would read "In the queue" forever.
            text = f"*{order.id}* · its run's live plan follows in this thread"
            try:
                await self.client.chat_update(
                    channel=before.channel, ts=before.ts, text=text, blocks=sections(text)
                )
            except SlackApiError as exc:
                if exc.response.get("error") != "message_not_found":
                    raise
        await self.store.slack.save_slack_message(
            key=key, purpose="status", channel=order.channel, ts=ts, order=order.id
        )

    async def _team(self) -> str:
        known = surface(self.client)
        if known.team_id is None:
            response = await self.client.auth_test()
            known.team_id = str(response.get("team_id") or "")
        return known.team_id
