"""Slack bookkeeping: deliveries seen, messages posted (by idempotency key), thread history, and
the intake dialogue of each thread."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Table, delete, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from workers.audit import AuditKey, canonical_json
from workers.models import IntakeSession, SlackEventSeen, SlackMessage, ThreadMessage, utcnow
from workers.store.base import OrderRef, StoreBase, order_number
from workers.store.leases import database_now
from workers.store.outbox import OutboxItem, insert_ignoring, write_outbox

log = logging.getLogger(__name__)

ClaimState = Literal["claimed", "retaken", "posted", "busy"]
"""claimed: post it; retaken: a claimer died or its post's outcome is unknown, look for the
post first; posted: done (ts); busy: another process is posting it right now."""
UNCERTAIN = "?uncertain"
"""`claimed_by` of a post that may have been made: whoever claims it next looks first."""

_messages: Table = SlackMessage.__table__  # type: ignore[attr-defined]


@dataclass
class RenewedClaims:
    """The key claims one send makes while its sender renews them (bot.delivery): they last
    `claim_s`, not the caller's longer claim, and `keys` says which to renew."""

    claim_s: float
    keys: set[str] = field(default_factory=set)


RENEWED_CLAIMS: ContextVar[RenewedClaims | None] = ContextVar("renewed_claims", default=None)
"""Set by a sender for the task of one send; a key claimed inside it joins its renewals."""


def delivery_mac(key: AuditKey, event_id: str, delivery: dict[str, Any]) -> str:
    return key.mac(f"slack-delivery:{event_id}:{canonical_json(delivery)}")


def sealed_delivery(key: AuditKey, event_id: str, delivery: dict[str, Any]) -> dict[str, Any]:
    """How a delivery is kept for replay: with a MAC under the audit key, so that a body
    written into the table by anyone without the key (a planted approval, say) is never
    replayed as if Slack had sent it."""
    return {"delivery": delivery, "mac": delivery_mac(key, event_id, delivery)}


def _opened(key: AuditKey, event_id: str, stored: Any) -> dict[str, Any] | None:
    """The delivery a stored body seals, if its MAC holds under `key`; else None."""
    if not isinstance(stored, dict):
        return None
    delivery, mac = stored.get("delivery"), stored.get("mac")
    if not isinstance(delivery, dict) or not isinstance(mac, str):
        return None
    if not hmac.compare_digest(delivery_mac(key, event_id, delivery), mac):
        return None
    return delivery


class SlackStore(StoreBase):
    async def mark_event_seen(
        self, event_id: str, *, kind: str = "", body: dict[str, Any] | None = None
    ) -> bool:
        """Record an inbound delivery; False if any process has recorded it before.

        With `body`, the delivery counts as unhandled until `event_handled`: should this process
        die first, `claim_unhandled_events` hands it to another one later."""
        handled_at = None if body is not None else utcnow()
        kept = None if body is None else sealed_delivery(self.audit_key, event_id, body)
        try:
            async with self.transaction() as s:
                s.add(
                    SlackEventSeen(event_id=event_id, kind=kind, body=kept, handled_at=handled_at)
                )
        except IntegrityError:
            return False
        return True

    async def event_handled(self, event_id: str) -> None:
        """The listener finished with this delivery (its body is no longer kept)."""
        async with self.transaction() as s:
            await s.exec(
                update(SlackEventSeen)
                .where(
                    col(SlackEventSeen.event_id) == event_id,
                    col(SlackEventSeen.handled_at).is_(None),
                )
                .values(handled_at=utcnow(), body=None)
            )

    async def claim_unhandled_events(
        self, *, started_before: datetime, max_attempts: int, limit: int = 50
    ) -> list[tuple[str, dict[str, Any]]]:
        """Deliveries (id, body) whose handling started before `started_before` and never finished (the
        process died). Each is taken atomically (its start moved to now, one more attempt), so
        of several processes looking at once only one replays it; after `max_attempts` it is
        given up (marked handled) rather than replayed for ever. A body whose MAC does not hold
        under the audit key was not stored by Delegate: it is given up at once, never replayed."""
        query = (
            select(SlackEventSeen.event_id)
            .where(
                col(SlackEventSeen.handled_at).is_(None),
                col(SlackEventSeen.received_at) < started_before,
            )
            .order_by(col(SlackEventSeen.received_at))
            .limit(limit)
        )
        taken: list[tuple[str, dict[str, Any]]] = []
        async with self._sessions() as s:
            candidates = list((await s.exec(query)).all())
        for event_id in candidates:
            async with self.transaction() as s:
                row = await s.get(SlackEventSeen, event_id)
                if row is None or row.handled_at is not None:
                    continue
                attempts = row.attempts
                body = _opened(self.audit_key, event_id, row.body)
                forged = row.body is not None and body is None
                gave_up = attempts >= max_attempts or body is None
                result = await s.exec(
                    update(SlackEventSeen)
                    .where(
                        col(SlackEventSeen.event_id) == event_id,
                        col(SlackEventSeen.handled_at).is_(None),
                        col(SlackEventSeen.attempts) == attempts,
                    )
                    .values(
                        received_at=utcnow(),
                        attempts=attempts + 1,
                        handled_at=utcnow() if gave_up else None,
                    )
                )
                if result.rowcount == 1 and forged:
                    # Once (it is now marked handled), and without the body: it is not ours.
                    log.warning(
                        "a stored Slack delivery does not carry a valid MAC under the audit key "
                        "(written into the database by someone without the key, or under "
                        "another key): not replayed event_id=%.80r",
                        event_id,
                    )
                if result.rowcount == 1 and body is not None and not gave_up:
                    taken.append((event_id, body))
        return taken

    async def prune_seen_events(self, before: datetime) -> int:
        """Forget handled deliveries recorded before `before` (past Slack's retry window)."""
        async with self.transaction() as s:
            result = await s.exec(
                delete(SlackEventSeen).where(
                    col(SlackEventSeen.received_at) < before,
                    col(SlackEventSeen.handled_at).is_not(None),
                )
            )
            return int(result.rowcount or 0)

    async def slack_message(self, key: str) -> SlackMessage | None:
        async with self._sessions() as s:
            return (await s.exec(select(SlackMessage).where(SlackMessage.key == key))).first()

    async def save_slack_message(
        self, *, key: str, purpose: str, channel: str, ts: str, order: OrderRef | None = None
    ) -> SlackMessage:
        """Remember a posted message under its idempotency key (insert, or update its ts)."""
        order_id = order_number(order) if order is not None else None
        async with self.transaction() as s:
            existing = (await s.exec(select(SlackMessage).where(SlackMessage.key == key))).first()
            if existing is None:
                existing = SlackMessage(
                    key=key, purpose=purpose, channel=channel, ts=ts, order_id=order_id
                )
            else:
                existing.channel, existing.ts, existing.updated_at = channel, ts, utcnow()
            if ts:
                existing.claimed_by = existing.claimed_until = None
            s.add(existing)
        return existing

    async def claim_slack_message(
        self,
        *,
        key: str,
        purpose: str,
        channel: str,
        owner: str,
        order: OrderRef | None = None,
        claim_s: float = 60.0,
    ) -> tuple[ClaimState, SlackMessage]:
        """Claim the right to post `key`, atomically across processes: the first to insert the
        key wins; a claim whose owner died is retaken once it has expired (`claim_s`).

        Claim times are the database's: a host whose clock runs ahead must not take a live
        claim of another process for an expired one (and post the message twice).

        Inside a send whose claims are renewed (`RENEWED_CLAIMS`), the claim lasts that send's
        shorter `claim_s` and is renewed with it."""
        renewed = RENEWED_CLAIMS.get()
        if renewed is not None:
            claim_s = min(claim_s, renewed.claim_s)
        async with self.transaction() as s:
            now = await database_now(self, s)
            state, row = await self._claim_slack_message(
                s, key=key, purpose=purpose, channel=channel, owner=owner, order=order,
                until=now + timedelta(seconds=claim_s), now=now,
            )  # fmt: skip
        if renewed is not None and state in ("claimed", "retaken"):
            renewed.keys.add(key)
        return state, row

    async def _claim_slack_message(
        self,
        s: AsyncSession,
        *,
        key: str,
        purpose: str,
        channel: str,
        owner: str,
        order: OrderRef | None,
        until: datetime,
        now: datetime,
    ) -> tuple[ClaimState, SlackMessage]:
        values = {
            "key": key,
            "purpose": purpose,
            "channel": channel,
            "ts": "",
            "order_id": order_number(order) if order is not None else None,
            "created_at": now,
            "updated_at": now,
            "claimed_by": owner,
            "claimed_until": until,
        }
        state: ClaimState
        inserted = await s.exec(insert_ignoring(s, _messages, values))
        by_key = select(SlackMessage).where(SlackMessage.key == key)
        if inserted.rowcount == 1:
            state = "claimed"
        else:
            existing = (await s.exec(by_key)).one()
            if existing.ts:
                return "posted", existing
            # Released after a failed post (claimed_by ''), or its claimer died.
            released = existing.claimed_by == ""
            taken = await s.exec(
                update(SlackMessage)
                .where(
                    col(SlackMessage.key) == key,
                    or_(col(SlackMessage.ts).is_(None), col(SlackMessage.ts) == ""),
                    or_(
                        col(SlackMessage.claimed_until).is_(None),
                        col(SlackMessage.claimed_until) < now,
                    ),
                )
                .values(claimed_by=owner, claimed_until=until, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount != 1:
                return "busy", existing
            state = "claimed" if released else "retaken"
        row = (await s.exec(by_key.execution_options(populate_existing=True))).one()
        return state, row

    async def forget_slack_message(self, key: str, ts: str) -> None:
        """Drop the record of a posted message Slack no longer has (deleted there), so the key
        can be posted again; a record already pointing at a newer post is kept."""
        async with self.transaction() as s:
            await s.exec(
                delete(SlackMessage).where(col(SlackMessage.key) == key, col(SlackMessage.ts) == ts)
            )

    async def release_slack_message(self, key: str, owner: str) -> None:
        """A post Slack refused: give the claim back (known not posted) for the next attempt."""
        async with self.transaction() as s:
            await s.exec(
                update(SlackMessage)
                .where(
                    col(SlackMessage.key) == key,
                    col(SlackMessage.claimed_by) == owner,
                    or_(col(SlackMessage.ts).is_(None), col(SlackMessage.ts) == ""),
                )
                .values(claimed_by="", claimed_until=None)
            )

    async def uncertain_slack_message(self, key: str, owner: str) -> None:
        """A post whose outcome is unknown (timeout, dropped connection, 5xx): Slack may have
        made it. The next claim is told "retaken", so it looks for the post before posting."""
        async with self.transaction() as s:
            await s.exec(
                update(SlackMessage)
                .where(
                    col(SlackMessage.key) == key,
                    col(SlackMessage.claimed_by) == owner,
                    or_(col(SlackMessage.ts).is_(None), col(SlackMessage.ts) == ""),
                )
                .values(claimed_by=UNCERTAIN, claimed_until=None)
            )

    async def record_thread_message(
        self,
        *,
        channel: str,
        thread_ts: str,
        ts: str,
        text: str,
        user: str | None = None,
        bot_id: str | None = None,
        files: list[dict[str, Any]] | None = None,
    ) -> bool:
        """Remember a message seen in a thread (with what is attached to it); False if it was
        already stored."""
        try:
            async with self.transaction() as s:
                s.add(
                    ThreadMessage(
                        channel=channel,
                        thread_ts=thread_ts,
                        ts=ts,
                        text=text,
                        user=user,
                        bot_id=bot_id,
                        files=files,
                    )
                )
        except IntegrityError:
            return False
        return True

    async def edit_thread_message(self, channel: str, ts: str, text: str) -> bool:
        """Replace the stored text of a message edited in Slack; False if none was stored (an
        edit never adds a message Delegate did not keep)."""
        async with self.transaction() as s:
            result = await s.exec(
                update(ThreadMessage)
                .where(col(ThreadMessage.channel) == channel, col(ThreadMessage.ts) == ts)
                .values(text=text)
            )
            return bool(result.rowcount)

    async def forget_thread_message(self, channel: str, ts: str) -> bool:
        """Drop the stored copy of a message deleted in Slack; False if none was stored."""
        async with self.transaction() as s:
            result = await s.exec(
                delete(ThreadMessage).where(
                    col(ThreadMessage.channel) == channel, col(ThreadMessage.ts) == ts
                )
            )
            return bool(result.rowcount)

    async def prune_thread_messages(self, before: datetime) -> int:
        """Drop stored thread text received before `before` (retention); how many rows."""
        async with self.transaction() as s:
            result = await s.exec(
                delete(ThreadMessage).where(col(ThreadMessage.received_at) < before)
            )
            return int(result.rowcount or 0)

    async def thread_messages(self, channel: str, thread_ts: str) -> list[ThreadMessage]:
        query = (
            select(ThreadMessage)
            .where(ThreadMessage.channel == channel, ThreadMessage.thread_ts == thread_ts)
            .order_by(col(ThreadMessage.ts))
        )
        async with self._sessions() as s:
            return list((await s.exec(query)).all())

    async def open_intake(
        self, *, channel: str, thread_ts: str, requester: str, surface: str = "slack"
    ) -> tuple[IntakeSession, bool]:
        """The dialogue in this thread, creating it if needed; True if it was created now."""
        existing = await self.intake_session(channel, thread_ts)
        if existing is not None:
            return existing, False
        try:
            async with self.transaction() as s:
                session = IntakeSession(
                    channel=channel, thread_ts=thread_ts, requester=requester, surface=surface
                )
                s.add(session)
        except IntegrityError:  # another process opened it a moment ago
            again = await self.intake_session(channel, thread_ts)
            assert again is not None
            return again, False
        return session, True

    async def intake_session(self, channel: str, thread_ts: str) -> IntakeSession | None:
        query = select(IntakeSession).where(
            IntakeSession.channel == channel, IntakeSession.thread_ts == thread_ts
        )
        async with self._sessions() as s:
            return (await s.exec(query)).first()

    async def intake_by_id(self, session_id: int) -> IntakeSession | None:
        async with self._sessions() as s:
            return await s.get(IntakeSession, session_id)

    async def intake_for_order(self, ref: OrderRef) -> IntakeSession | None:
        query = select(IntakeSession).where(IntakeSession.order_id == order_number(ref))
        async with self._sessions() as s:
            return (await s.exec(query)).first()

    async def save_intake(
        self, session: IntakeSession, *, replies: Sequence[OutboxItem] = ()
    ) -> IntakeSession:
        """Save the dialogue, and what it says back in its thread (`replies`) with it: about its
        order once it has proposed one (so they go out in turn with the order's messages)."""
        session.updated_at = utcnow()
        async with self.transaction() as s:
            merged = await s.merge(session)
            if replies:
                await s.flush()
                await write_outbox(s, merged.order_id, replies, intake=merged.id)
        return merged
