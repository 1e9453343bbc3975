"""What a run leaves behind: attempts and their checkpoints, model and tool calls, deliverables
and their verdicts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from workers.audit import deliverable_facts, tool_call_facts
from workers.errors import NotFound
from workers.models import Deliverable, DeliverableFile, LlmCall, RunAttempt, ToolCall, WorkOrderRow
from workers.store.base import OrderRef, StoreBase, order_number
from workers.store.leases import fenced_row
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
            s.add(call)
            await s.flush()
            # Whom the call ran for: a downstream system's log that shows only a service
            # account traces back, through this event, to a person.
            await self._append_audit(
                s, format_order_id(call.order_id), actor="engine", kind="tool_call",
                data={**tool_call_facts(call), "requester": row.requester if row else None},
            )  # fmt: skip
        return call

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
