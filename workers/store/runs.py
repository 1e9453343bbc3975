"""What a run leaves behind: attempts and their checkpoints, model and tool calls, deliverables
and their verdicts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from workers.audit import deliverable_facts, tool_call_facts
from workers.budget import ToolCount
from workers.errors import NotFound
from workers.models import (
    Deliverable,
    DeliverableFile,
    LlmCall,
    RunAttempt,
    ToolCall,
    WorkOrderRow,
    utcnow,
)
from workers.store.base import OrderRef, StoreBase, order_number
from workers.store.leases import fenced_row
from workers.store.outbox import run_step_item, write_outbox
from workers.workorder import format_order_id


class HandedInFile(Protocol):
    """A checked file to store with its deliverable (workers.tools.files.HandedInFile)."""

    @property
    def name(self) -> str: ...

    @property
    def mimetype(self) -> str: ...

    @property
    def content(self) -> bytes: ...

    @property
    def size(self) -> int: ...

    @property
    def sha256(self) -> str: ...

_PerOrder = TypeVar("_PerOrder", RunAttempt, LlmCall, ToolCall, Deliverable)


@dataclass(frozen=True)
class Checkpoint:
    """The agent's history after a step, the running time, and how much of the requester's
    inbox the step read."""

    messages: list[dict[str, Any]]
    step: int
    elapsed_ms: int
    consumed_inbox: int = 0


@dataclass(frozen=True)
class StepSaved:
    inbox: list[dict[str, Any]] | None
    """What the inbox holds now, read under the lock (None: no checkpoint was written)."""
    counted: bool
    """The tool call was counted (False: none was asked for, or the ceiling refused it)."""


async def write_checkpoint(
    store: StoreBase,
    s: AsyncSession,
    row: WorkOrderRow,
    attempt_id: int,
    checkpoint: Checkpoint,
    *,
    count_tool_call: bool = False,
) -> list[dict[str, Any]]:
    """Save `checkpoint` on the attempt whose order row `row` the transaction holds locked (and
    count one tool call in the same statement); what the inbox holds after the part the step
    read."""
    inbox = list(row.inbox or [])[checkpoint.consumed_inbox :]
    values: dict[str, Any] = {"elapsed_ms": checkpoint.elapsed_ms}
    if checkpoint.consumed_inbox:
        values["inbox"] = inbox
    if count_tool_call:
        values["tool_calls"] = WorkOrderRow.tool_calls + 1
    saved = (
        update(RunAttempt)
        .where(col(RunAttempt.id) == attempt_id)
        .values(checkpoint=checkpoint.messages, step=checkpoint.step, checkpoint_at=utcnow())
    )
    timed = update(WorkOrderRow).where(col(WorkOrderRow.id) == row.id).values(**values)
    if store._sqlite:
        await s.exec(saved)
        await s.exec(timed)
    else:  # one round trip: the attempt's update rides along as a CTE
        await s.exec(timed.add_cte(saved.cte("checkpoint")))
    return inbox


async def count_tool_call_in(
    s: AsyncSession, row: WorkOrderRow, count: ToolCount, *, counted: bool | None = None
) -> bool:
    """Count one tool call of the order whose row the transaction holds locked, if the ceiling
    allows it, and show its `status` in the same transaction; False (nothing counted) if not.
    `counted`: already decided and written with the step's checkpoint."""
    if counted is None:
        result = await s.exec(
            update(WorkOrderRow)
            .where(
                col(WorkOrderRow.id) == row.id,
                col(WorkOrderRow.tool_calls) < count.max_tool_calls,
            )
            .values(tool_calls=WorkOrderRow.tool_calls + 1)
        )
        counted = result.rowcount == 1
    if counted and count.status is not None:
        await write_outbox(s, row.id, [run_step_item(row, count.status, count.coalesce_s)])
    return counted


class RunsStore(StoreBase):
    async def _of_order(
        self, table: type[_PerOrder], ref: OrderRef, order_by: Any
    ) -> list[_PerOrder]:
        """An order's rows of one table (attempts, calls, deliverables), in `order_by` order."""
        query = select(table).where(table.order_id == order_number(ref)).order_by(order_by)
        async with self._sessions() as s:
            return list((await s.exec(query)).all())

    async def latest_checkpoint(self, ref: OrderRef) -> RunAttempt | None:
        """The most recent attempt that saved a checkpoint, to resume from."""
        query = (
            select(RunAttempt)
            .where(
                RunAttempt.order_id == order_number(ref),
                col(RunAttempt.checkpoint_at).is_not(None),
            )
            .order_by(col(RunAttempt.number).desc())
            .limit(1)
        )
        async with self._sessions() as s:
            return (await s.exec(query)).first()

    async def attempts_in_a_row(self, ref: OrderRef, outcome: str) -> int:
        """How many of the order's latest ended attempts, in a row, ended with `outcome`."""
        query = (
            select(RunAttempt.outcome)
            .where(
                RunAttempt.order_id == order_number(ref),
                col(RunAttempt.ended_at).is_not(None),
            )
            .order_by(col(RunAttempt.number).desc())
            .limit(100)
        )
        async with self._sessions() as s:
            outcomes = (await s.exec(query)).all()
        count = 0
        for ended in outcomes:
            if ended != outcome:
                break
            count += 1
        return count

    async def record_tool_call(self, call: ToolCall) -> ToolCall:
        async with self.transaction() as s:
            if call.attempt_id is not None:  # a run's tool call: fenced by its lease
                row: WorkOrderRow | None = await fenced_row(self, s, call.attempt_id)
            else:
                row = await s.get(WorkOrderRow, call.order_id)
            await self._record_tool_call(s, call, row)
        return call

    async def _record_tool_call(
        self, s: AsyncSession, call: ToolCall, row: WorkOrderRow | None
    ) -> None:
        s.add(call)
        await s.flush()
        # Whom the call ran for: a downstream system's log that shows only a service
        # account traces back, through this event, to a person.
        await self._append_audit(
            s, format_order_id(call.order_id), actor="engine", kind="tool_call",
            data={**tool_call_facts(call), "requester": row.requester if row else None},
        )  # fmt: skip

    async def save_step(
        self,
        attempt_id: int,
        *,
        tool_calls: Sequence[ToolCall] = (),
        checkpoint: Checkpoint | None = None,
        count: ToolCount | None = None,
    ) -> StepSaved:
        """What a run step writes, in one transaction under the attempt's lease (LeaseLost if
        it no longer holds it): the tool calls it made, each with its audit event; its
        checkpoint; and the count of the tool call it is about to make, with the status that
        call shows. Apart, each was a transaction with a fenced read of its own."""
        async with self.transaction() as s:
            row = await fenced_row(self, s, attempt_id)
            for call in tool_calls:
                await self._record_tool_call(s, call, row)
            # On PostgreSQL the fenced read locked the order's row, so its count is the count
            # now: the checkpoint's statement can make the call's count too.
            decided = None
            if count is not None and checkpoint is not None and not self._sqlite:
                decided = row.tool_calls < count.max_tool_calls
            inbox = None
            if checkpoint is not None:
                inbox = await write_checkpoint(
                    self, s, row, attempt_id, checkpoint, count_tool_call=bool(decided)
                )
            counted = count is not None and await count_tool_call_in(
                s, row, count, counted=decided
            )
        return StepSaved(inbox=inbox, counted=counted)

    async def tool_calls(self, ref: OrderRef) -> list[ToolCall]:
        return await self._of_order(ToolCall, ref, col(ToolCall.id))

    async def save_deliverable(
        self,
        ref: OrderRef,
        *,
        tool_use_id: str,
        content: str,
        summary: str,
        attempt_id: int | None,
        actor: str,
        files: Sequence[HandedInFile] = (),
    ) -> Deliverable:
        """Store a submission once per tool use: a resumed run re-submitting gets the same row.
        Its files are stored with it, and their hashes go into the audit chain with it."""
        number = order_number(ref)
        try:
            async with self.transaction() as s:
                if attempt_id is not None:  # fenced by the attempt's lease
                    await fenced_row(self, s, attempt_id)
                item = Deliverable(
                    order_id=number,
                    attempt_id=attempt_id,
                    tool_use_id=tool_use_id,
                    content=content,
                    summary=summary,
                )
                s.add(item)
                await s.flush()
                assert item.id is not None
                rows = [
                    DeliverableFile(
                        deliverable_id=item.id,
                        position=position,
                        name=file.name,
                        mimetype=file.mimetype,
                        size=file.size,
                        sha256=file.sha256,
                        content=file.content,
                    )
                    for position, file in enumerate(files, 1)
                ]
                s.add_all(rows)
                await self._append_audit(
                    s,
                    format_order_id(number),
                    actor=actor,
                    kind="deliverable",
                    data=deliverable_facts(item, rows),
                )
            return item
        except IntegrityError:
            query = select(Deliverable).where(
                Deliverable.order_id == number, Deliverable.tool_use_id == tool_use_id
            )
            async with self._sessions() as s:
                return (await s.exec(query)).one()

    async def deliverables(self, ref: OrderRef) -> list[Deliverable]:
        return await self._of_order(Deliverable, ref, col(Deliverable.id))

    async def deliverable_files(self, deliverable_id: int) -> list[DeliverableFile]:
        """The files handed in with a deliverable, in the order the run listed them."""
        query = (
            select(DeliverableFile)
            .where(DeliverableFile.deliverable_id == deliverable_id)
            .order_by(col(DeliverableFile.position))
        )
        async with self._sessions() as s:
            return list((await s.exec(query)).all())

    async def save_verdicts(
        self, deliverable_id: int, verdicts: list[dict[str, Any]], *, actor: str, passed: bool
    ) -> None:
        """Attach the automatic check's verdicts to a deliverable, and audit them."""
        async with self.transaction() as s:
            item = await s.get(Deliverable, deliverable_id)
            if item is None:
                raise NotFound(f"deliverable {deliverable_id} does not exist")
            item.verdicts = verdicts
            s.add(item)
            await self._append_audit(
                s,
                format_order_id(item.order_id),
                actor=actor,
                kind="verified",
                data={"deliverable": deliverable_id, "passed": passed, "verdicts": verdicts},
            )
