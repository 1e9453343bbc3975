"""Spend and quota: worst-case reservations before a model call, settlement after, tool-call
counts, and each team's week. Rows are locked in one order (work order, then its model calls,
then the team's week) so that concurrent workers cannot deadlock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from workers.audit import SYSTEM_CHAIN, model_call_facts
from workers.budget import CallPlan, Headroom, usd_to_micro
from workers.models import LlmCall, TeamSpend, WorkOrderRow
from workers.progress import Spend
from workers.store.base import OrderRef, StoreBase, order_number
from workers.store.leases import fenced_row
from workers.workorder import Budget, format_order_id

if TYPE_CHECKING:
    from workers.providers.base import Usage


class SpendStore(StoreBase):
    async def spend(self, ref: OrderRef, *, elapsed_s: float | None = None) -> Spend:
        """Where the order stands against its budget (`elapsed_s` if the caller knows better)."""
        async with self._sessions() as s:
            return Spend.of(await self._row(s, ref), elapsed_s=elapsed_s)

    async def record_llm_call(self, call: LlmCall) -> LlmCall:
        """Record a call made outside a run's budget; an intake call is charged to its team's
        week in the same transaction."""
        async with self.transaction() as s:
            s.add(call)
            await s.flush()
            if call.order_id is None and call.team and call.quota_week and call.cost_micro_usd:
                await self._charge_team(s, call.team, call.quota_week, call.cost_micro_usd)
            if call.order_id is not None:
                await self._append_audit(
                    s, format_order_id(call.order_id), actor="engine", kind="model_call",
                    data=model_call_facts(call),
                )  # fmt: skip
        return call

    async def _charge_team(self, s: AsyncSession, team: str, week: str, micro_usd: int) -> None:
        spend = await self._team_week(s, team, week)
        await s.exec(
            update(TeamSpend)
            .where(col(TeamSpend.id) == spend.id)
            .values(spent_micro_usd=TeamSpend.spent_micro_usd + micro_usd)
        )

    async def team_week_used(self, team: str, week: str) -> int:
        """What a team has spent and holds back this quota week, in micro-USD."""
        query = select(TeamSpend).where(TeamSpend.team == team, TeamSpend.week == week)
        async with self._sessions() as s:
            row = (await s.exec(query)).first()
        return 0 if row is None else row.spent_micro_usd + row.reserved_micro_usd

    async def intake_calls_since(self, requester: str, since: datetime) -> int:
        """How many intake model calls this person caused since `since`."""
        query = select(func.count()).where(
            col(LlmCall.requester) == requester, col(LlmCall.created_at) >= since
        )
        async with self._sessions() as s:
            return int((await s.exec(query)).one())

    async def _team_week(self, s: AsyncSession, team: str, week: str) -> TeamSpend:
        """The team's row for the week, created if missing and locked for update."""
        insert = sqlite_insert if self._sqlite else pg_insert
        await s.exec(
            insert(TeamSpend)
            .values(team=team, week=week, spent_micro_usd=0, reserved_micro_usd=0)
            .on_conflict_do_nothing()
        )
        query = select(TeamSpend).where(TeamSpend.team == team, TeamSpend.week == week)
        query = self._for_update(query)
        spend = (await s.exec(query.execution_options(populate_existing=True))).one()
        return spend

    async def reserve_spend(
        self,
        ref: OrderRef,
        *,
        team: str,
        week: str,
        quota_micro_usd: int,
        plan: Callable[[Headroom], CallPlan],
        call: LlmCall,
    ) -> tuple[LlmCall, CallPlan]:
        """Hold back a call's worst case against the order and the team's week, atomically.

        `plan` sees the headroom under the locks and returns what to reserve (or raises
        BudgetExceeded, which rolls everything back). The call is recorded as pending.
        """
        async with self.transaction() as s:
            if call.attempt_id is not None:  # a run's call: fenced by its lease
                row = await fenced_row(self, s, call.attempt_id)
            else:
                row = await self._row(s, ref, for_update=True)
            spend = await self._team_week(s, team, week)
            budget = Budget.model_validate(row.budget)
            quota = spend.quota_micro_usd if spend.quota_micro_usd is not None else quota_micro_usd
            headroom = Headroom(
                order_micro_usd=usd_to_micro(budget.max_usd)
                - row.spent_micro_usd
                - row.reserved_micro_usd,
                team_micro_usd=quota - spend.spent_micro_usd - spend.reserved_micro_usd,
                tokens=budget.max_tokens - row.spent_tokens - row.reserved_tokens,
                model_calls=budget.max_model_calls - row.model_calls,
            )
            chosen = plan(headroom)
            await s.exec(
                update(WorkOrderRow)
                .where(col(WorkOrderRow.id) == row.id)
                .values(
                    reserved_micro_usd=WorkOrderRow.reserved_micro_usd + chosen.reserve_micro_usd,
                    reserved_tokens=WorkOrderRow.reserved_tokens + chosen.reserve_tokens,
                    model_calls=WorkOrderRow.model_calls + 1,
                )
            )
            await s.exec(
                update(TeamSpend)
                .where(col(TeamSpend.id) == spend.id)
                .values(reserved_micro_usd=TeamSpend.reserved_micro_usd + chosen.reserve_micro_usd)
            )
            call.order_id = row.id
            call.reserved_micro_usd = chosen.reserve_micro_usd
            call.reserved_tokens = chosen.reserve_tokens
            call.team = team
            call.quota_week = week
            call.outcome = "pending"
            s.add(call)
            await s.flush()
        return call, chosen

    async def settle_spend(
        self,
        call_id: int,
        *,
        cost_micro_usd: int,
        tokens: int,
        usage: Usage | None,
        outcome: str,
        latency_ms: int,
        provider: str | None = None,
        model: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Swap a pending call's reservation for its actual cost; False if already settled.

        `usage` None means unknown (the call was cut off): the cost given is the worst case."""
        async with self._sessions() as s:
            found = await s.get(LlmCall, call_id)
        if found is None or found.outcome != "pending" or found.order_id is None:
            return False
        async with self.transaction() as s:
            row = await self._row(s, found.order_id, for_update=True)
            call = await self._pending_call(s, call_id)
            if call is None:
                return False
            if usage is not None:
                call.input_tokens = usage.input_tokens
                call.output_tokens = usage.output_tokens
                call.cache_write_tokens = usage.cache_write_tokens
                call.cache_read_tokens = usage.cache_read_tokens
            call.latency_ms = latency_ms
            call.error = error
            call.provider = provider or call.provider
            call.model = model or call.model
            await self._charge(s, row, call, cost_micro_usd=cost_micro_usd, tokens=tokens)
            call.outcome = outcome
            s.add(call)
            await self._append_audit(
                s, format_order_id(found.order_id), actor="engine", kind="model_call",
                data=model_call_facts(call),
            )  # fmt: skip
            if cost_micro_usd > call.reserved_micro_usd:
                await self._append_audit(
                    s, format_order_id(found.order_id), actor="engine", kind="reservation_overrun",
                    data={
                        "model_call": call.id,
                        "reserved_micro_usd": call.reserved_micro_usd,
                        "cost_micro_usd": cost_micro_usd,
                    },
                )  # fmt: skip
        return True

    async def _pending_call(self, s: AsyncSession, call_id: int) -> LlmCall | None:
        query = select(LlmCall).where(LlmCall.id == call_id, LlmCall.outcome == "pending")
        query = self._for_update(query)
        return (await s.exec(query.execution_options(populate_existing=True))).first()

    async def _charge(
        self, s: AsyncSession, row: WorkOrderRow, call: LlmCall, *, cost_micro_usd: int, tokens: int
    ) -> None:
        await s.exec(
            update(WorkOrderRow)
            .where(col(WorkOrderRow.id) == row.id)
            .values(
                reserved_micro_usd=WorkOrderRow.reserved_micro_usd - call.reserved_micro_usd,
                spent_micro_usd=WorkOrderRow.spent_micro_usd + cost_micro_usd,
                reserved_tokens=WorkOrderRow.reserved_tokens - call.reserved_tokens,
                spent_tokens=WorkOrderRow.spent_tokens + tokens,
            )
        )
        if call.team is not None and call.quota_week is not None:
            spend = await self._team_week(s, call.team, call.quota_week)
            await s.exec(
                update(TeamSpend)
                .where(col(TeamSpend.id) == spend.id)
                .values(
                    reserved_micro_usd=TeamSpend.reserved_micro_usd - call.reserved_micro_usd,
                    spent_micro_usd=TeamSpend.spent_micro_usd + cost_micro_usd,
                )
            )
        call.cost_micro_usd = cost_micro_usd

    async def _settle_pending(self, s: AsyncSession, row: WorkOrderRow, *, outcome: str) -> int:
        """Charge every pending call of the order its reserved worst case (usage unknown)."""
        query = select(LlmCall).where(LlmCall.order_id == row.id, LlmCall.outcome == "pending")
        query = self._for_update(query)
        calls = (await s.exec(query.execution_options(populate_existing=True))).all()
        for call in calls:
            await self._charge(
                s, row, call, cost_micro_usd=call.reserved_micro_usd, tokens=call.reserved_tokens
            )
            call.outcome = outcome
            call.error = "usage unknown: charged the reserved worst case"
            s.add(call)
        return len(calls)

    async def settle_orphaned_calls(self, ref: OrderRef, *, outcome: str = "interrupted") -> int:
        """Charge in full calls a run left pending (it was cut off before it could settle)."""
        async with self.transaction() as s:
            row = await self._row(s, ref, for_update=True)
            return await self._settle_pending(s, row, outcome=outcome)

    async def count_tool_call(
        self, ref: OrderRef, *, max_tool_calls: int, attempt_id: int | None = None
    ) -> bool:
        """Count one tool call if the ceiling allows it; False (nothing counted) otherwise.
        With `attempt_id`, LeaseLost if that attempt no longer holds the order's lease."""
        async with self.transaction() as s:
            if attempt_id is not None:
                await fenced_row(self, s, attempt_id)
            result = await s.exec(
                update(WorkOrderRow)
                .where(
                    col(WorkOrderRow.id) == order_number(ref),
                    col(WorkOrderRow.tool_calls) < max_tool_calls,
                )
                .values(tool_calls=WorkOrderRow.tool_calls + 1)
            )
            return result.rowcount == 1

    async def set_team_quota(
        self, team: str, week: str, *, quota_micro_usd: int | None, actor: str
    ) -> TeamSpend:
        """A lead raises (or resets, with None) a team's quota for one week."""
        async with self.transaction() as s:
            spend = await self._team_week(s, team, week)
            previous = spend.quota_micro_usd
            spend.quota_micro_usd = quota_micro_usd
            s.add(spend)
            await self._append_audit(
                s,
                SYSTEM_CHAIN,
                actor=actor,
                kind="team_quota",
                data={"team": team, "week": week, "from": previous, "to": quota_micro_usd},
            )
        return spend
