"""Approvals of tool calls: a run asks before a call its policy says `ask` for (or web_fetch
asks to read a domain outside its allowlist), a person answers.

The request is keyed by the tool call that made it, so the call re-run on resume finds its
answer. Creating it writes the prompt to the outbox in the same transaction; deciding is
compare-and-set (a second click changes nothing), writes the edit that shows who decided, and,
when the run is parked waiting for it, requeues the order, all in one transaction. Every step is
audited with the digest of the call's arguments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from workers.audit import canonical_json
from workers.errors import NotFound
from workers.keys import approval_key, decided_key, domain_key
from workers.models import ToolApproval, utcnow
from workers.store.base import OrderRef, StoreBase, order_number, row_to_order
from workers.store.leases import fenced_row, transaction_now
from workers.store.outbox import OutboxItem, write_outbox
from workers.workorder import Status, WorkOrder, format_order_id

Decision = Literal["once", "order", "deny"]
DECISIONS: tuple[Decision, ...] = ("once", "order", "deny")
# The names the domain flow was written with.
DomainDecision = Decision
DOMAIN_DECISIONS = DECISIONS

MAX_ARGUMENTS_CHARS = 1_000_000
"""The copy of a call's arguments kept with its approval, and attached to a long prompt as a
file (the digest covers all of them)."""


@dataclass(frozen=True)
class Decided:
    """The outcome of an answer: the approval as it now stands, whether this answer was the one
    recorded (False: it had been answered before), and the order."""

    approval: ToolApproval
    recorded: bool
    order: WorkOrder


@dataclass(frozen=True)
class CallArguments:
    """A tool call's arguments as an approval keeps them: canonical JSON, capped, and the
    SHA-256 and length of the whole."""

    text: str
    sha256: str
    chars: int

    @classmethod
    def of(cls, arguments: Any) -> CallArguments:
        whole = canonical_json(arguments)
        return cls(
            whole[:MAX_ARGUMENTS_CHARS], hashlib.sha256(whole.encode()).hexdigest(), len(whole)
        )


def prompt_key(approval: ToolApproval) -> str:
    """The outbox key of an approval's prompt in the thread."""
    order_id = format_order_id(approval.order_id)
    if approval.kind == "domain":
        return domain_key(order_id, approval.id)
    return approval_key(order_id, approval.id)


def approval_facts(approval: ToolApproval) -> dict[str, Any]:
    """What the audit chain records of an approval: which call, which tool, which arguments."""
    facts: dict[str, Any] = {
        "approval": approval.id,
        "tool_use_id": approval.tool_use_id,
        "tool": approval.tool,
        "server": approval.server,
        "arguments_sha256": approval.arguments_sha256,
    }
    if approval.kind == "domain":
        facts |= {"host": approval.host, "url": approval.url}
    return facts


class ApprovalsStore(StoreBase):
    async def request_approval(
        self,
        ref: OrderRef,
        *,
        tool_use_id: str,
        tool: str,
        server: str | None,
        arguments: Any,
        reason: str = "",
        approvers: Sequence[str] = (),
        attempt_id: int | None = None,
    ) -> ToolApproval:
        """The approval request of this tool call, created (audited, its prompt written to the
        outbox) the first time; fenced by the lease of `attempt_id` when given."""
        return await self._request(
            ref,
            ToolApproval(
                order_id=order_number(ref),
                tool_use_id=tool_use_id,
                kind="tool",
                tool=tool,
                server=server,
                reason=reason,
            ),
            CallArguments.of(arguments),
            attempt_id=attempt_id,
            approvers=approvers,
        )

    async def request_domain_approval(
        self,
        ref: OrderRef,
        *,
        tool_use_id: str,
        host: str,
        url: str,
        reason: str,
        arguments: Any = None,
        approvers: Sequence[str] = (),
    ) -> ToolApproval:
        """web_fetch's request to read `host`, outside the order's domains."""
        return await self._request(
            ref,
            ToolApproval(
                order_id=order_number(ref),
                tool_use_id=tool_use_id,
                kind="domain",
                tool="web_fetch",
                host=host,
                url=url,
                reason=reason,
            ),
            CallArguments.of(arguments if arguments is not None else {"url": url}),
            approvers=approvers,
        )

    async def _request(
        self,
        ref: OrderRef,
        approval: ToolApproval,
        arguments: CallArguments,
        *,
        attempt_id: int | None = None,
        approvers: Sequence[str] = (),
    ) -> ToolApproval:
        number = order_number(ref)
        async with self.transaction() as s:
            if attempt_id is not None:  # a run's request: fenced by its lease
                await fenced_row(self, s, attempt_id)
            else:
                await self._row(s, number, for_update=True)
            found = await _for_call(s, number, approval.tool_use_id)
            if found is not None:
                return found
            approval.arguments = arguments.text
            approval.arguments_sha256 = arguments.sha256
            approval.arguments_chars = arguments.chars
            s.add(approval)
            await s.flush()
            assert approval.id is not None
            await self._append_audit(
                s,
                format_order_id(number),
                actor="agent",
                kind="domain_requested" if approval.kind == "domain" else "approval_requested",
                data={**approval_facts(approval), "reason": approval.reason},
            )
            # The prompt is owed from the moment the request exists: a crash right after this
            # commit must not leave an approval nobody was asked for.
            if approval.kind == "domain":
                payload: dict[str, Any] = {
                    "approval_id": approval.id,
                    "host": approval.host,
                    "url": approval.url,
                    "reason": approval.reason,
                    "approvers": list(approvers),
                }
                prompt = OutboxItem("domain", prompt_key(approval), payload)
            else:
                payload = {"approval_id": approval.id, "approvers": list(approvers)}
                prompt = OutboxItem("approval", prompt_key(approval), payload)
            await write_outbox(s, number, [prompt])
            await s.refresh(approval)
            return approval

    async def approval_for(self, ref: OrderRef, tool_use_id: str) -> ToolApproval | None:
        async with self._sessions() as s:
            return await _for_call(s, order_number(ref), tool_use_id)

    domain_approval_for = approval_for

    async def get_approval(self, approval_id: int) -> ToolApproval:
        async with self._sessions() as s:
            found = await s.get(ToolApproval, approval_id)
        if found is None:
            raise NotFound(f"approval request {approval_id} does not exist")
        return found

    get_domain_approval = get_approval

    async def standing_approval(
        self, ref: OrderRef, *, tool: str, server: str | None
    ) -> ToolApproval | None:
        """The first 'Allow for this order' answer for this tool on this order (the order's
        own: an answer never reaches another order)."""
        return await self._answered(ref, tool=tool, server=server, decision="order")

    async def denied_call(
        self, ref: OrderRef, *, tool: str, server: str | None, arguments_sha256: str
    ) -> ToolApproval | None:
        """A 'Deny' answer on this order for the same tool with the same arguments."""
        return await self._answered(
            ref, tool=tool, server=server, decision="deny", arguments_sha256=arguments_sha256
        )

    async def _answered(
        self,
        ref: OrderRef,
        *,
        tool: str,
        server: str | None,
        decision: Decision,
        arguments_sha256: str | None = None,
    ) -> ToolApproval | None:
        """The first request for this tool on this order answered with `decision` (and these
        exact arguments, when given)."""
        conditions: list[Any] = [
            ToolApproval.order_id == order_number(ref),
            ToolApproval.kind == "tool",
            ToolApproval.tool == tool,
            col(ToolApproval.server).is_(None) if server is None else col(ToolApproval.server) == server,
            ToolApproval.decision == decision,
        ]
        if arguments_sha256 is not None:
            conditions.append(ToolApproval.arguments_sha256 == arguments_sha256)
        async with self._sessions() as s:
            query = select(ToolApproval).where(*conditions).order_by(col(ToolApproval.id))
            return (await s.exec(query)).first()

    async def decided_domains(self, ref: OrderRef, decision: Decision) -> list[str]:
        """Hosts answered with `decision` for this order ('order': its approved domains)."""
        async with self._sessions() as s:
            rows = await s.exec(
                select(ToolApproval.host)
                .where(
                    ToolApproval.order_id == order_number(ref),
                    ToolApproval.kind == "domain",
                    ToolApproval.decision == decision,
                )
                .order_by(col(ToolApproval.id))
            )
            return list(dict.fromkeys(rows.all()))

    async def decide_approval(self, approval_id: int, decision: Decision, *, actor: str) -> Decided:
        """Record the answer once, with the edit that shows it on the prompt; requeue the order
        if its run is parked waiting for it."""
        if decision not in DECISIONS:
            raise ValueError(f"{decision!r} is not an approval decision")
        async with self.transaction() as s:
            approval = await s.get(ToolApproval, approval_id)
            if approval is None:
                raise NotFound(f"approval request {approval_id} does not exist")
            row = await self._row(s, approval.order_id, for_update=True)
            await s.refresh(approval)
            if approval.decision is not None:
                return Decided(approval, False, row_to_order(row))
            approval.decision = decision
            approval.decided_by = actor
            approval.decided_at = utcnow()
            s.add(approval)
            order_id = format_order_id(approval.order_id)
            await self._append_audit(
                s,
                order_id,
                actor=actor,
                kind="domain_decision" if approval.kind == "domain" else "approval_decision",
                data={**approval_facts(approval), "decision": decision},
            )
            if row.status == Status.WAITING_FOR_REQUESTER.value:
                what = (
                    f"the request to read {approval.host}"
                    if approval.kind == "domain"
                    else f"the request to call {_tool_name(approval)}"
                )
                await self._move(
                    s,
                    row,
                    Status.QUEUED,
                    actor=actor,
                    reason=f"answered {what}: {decision}",
                    available_at=await transaction_now(s),  # due now on the database's clock
                )
            # The prompt shows who decided: an edit sent by the same road as the prompt, after it.
            key = prompt_key(approval)
            edit = OutboxItem(
                "approval_decided", decided_key(key), {"approval_id": approval.id, "key": key}
            )
            await write_outbox(s, approval.order_id, [edit])
            await s.flush()
            await s.refresh(approval)
            return Decided(approval, True, row_to_order(row))

    decide_domain_approval = decide_approval

    async def use_one_time_grant(self, approval_id: int) -> bool:
        """Spend an 'Allow once' answer; False if it was spent before (or is not one). The
        conditional update is the lock: two runs racing for one grant cannot both get it."""
        async with self.transaction() as s:
            result = await s.exec(
                update(ToolApproval)
                .where(
                    col(ToolApproval.id) == approval_id,
                    col(ToolApproval.decision) == "once",
                    col(ToolApproval.used_at).is_(None),
                )
                .values(used_at=utcnow())
            )
            if result.rowcount != 1:
                return False
            approval = await s.get(ToolApproval, approval_id)
            assert approval is not None
            await self._append_audit(
                s,
                format_order_id(approval.order_id),
                actor="agent",
                kind="domain_grant_used" if approval.kind == "domain" else "approval_grant_used",
                data=approval_facts(approval),
            )
            return True


async def answered_any(s: AsyncSession, number: int, tool_use_ids: Collection[str]) -> bool:
    """Whether any of these calls' approval requests has been answered (inside a transaction
    holding the order's row lock, which every answer takes too)."""
    if not tool_use_ids:
        return False
    found = await s.exec(
        select(ToolApproval.id).where(
            ToolApproval.order_id == number,
            col(ToolApproval.tool_use_id).in_(list(tool_use_ids)),
            col(ToolApproval.decision).is_not(None),
        )
    )
    return found.first() is not None


def _tool_name(approval: ToolApproval) -> str:
    return f"{approval.server}.{approval.tool}" if approval.server else approval.tool


async def _for_call(s: AsyncSession, number: int, tool_use_id: str) -> ToolApproval | None:
    return (
        await s.exec(
            select(ToolApproval).where(
                ToolApproval.order_id == number, ToolApproval.tool_use_id == tool_use_id
            )
        )
    ).first()
