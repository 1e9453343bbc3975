"""Spend and quota: worst-case reservations before a model call, settlement after, tool-call
counts, and each team's week. Rows are locked in one order (work order, then its model calls,
then its audit chain's head, then the team's week) so that concurrent workers cannot deadlock.

The team's week is the one row every run of a team writes, so reserving and settling lock it
last, with a single statement just before the commit: its lock is held for that statement and
the commit only."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, and_, bindparam, delete, func, insert, update
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.dml import UpdateBase
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from workers.audit import SYSTEM_CHAIN, model_call_facts
from workers.budget import CallPlan, Headroom, ToolCount, usd_to_micro
from workers.errors import BudgetExceeded, NotFound
from workers.models import IntakeSlot, LlmCall, RunAttempt, TeamSpend, WorkOrderRow
from workers.progress import Spend
from workers.store.base import HEAD_MOVED, Also, OrderRef, StoreBase, order_number
from workers.store.leases import check_fence, fenced_row
from workers.store.runs import count_tool_call_in
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

    async def take_intake_slot(
        self, requester: str, *, since: datetime, limit: int, now: datetime
    ) -> bool:
        """Admit one intake request if `requester` was admitted fewer than `limit` times since
        `since`; False (and nothing taken) otherwise. Counting and taking are one transaction,
        serialised per person, so concurrent requests cannot all see room for one more."""
        async with self.transaction() as s:
            await self._serialise(s, f"intake:{requester}")
            await s.exec(
                delete(IntakeSlot).where(
                    col(IntakeSlot.requester) == requester, col(IntakeSlot.created_at) < since
                )
            )
            taken = (
                await s.exec(
                    select(func.count()).where(
                        col(IntakeSlot.requester) == requester, col(IntakeSlot.created_at) >= since
                    )
                )
            ).one()
            if int(taken) >= limit:
                return False
            s.add(IntakeSlot(requester=requester, created_at=now))
            return True

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

        `plan` sees the headroom and returns what to reserve (or raises BudgetExceeded, which
        rolls everything back). The call is recorded as pending.

        The order's row is locked (one run per order: uncontended). The team's week, which
        every run of the team shares, is read without a lock and then charged by one
        conditional UPDATE, last before the commit, that goes through only if the reservation
        still fits under the quota; if a concurrent run took the headroom meanwhile (or the
        unlocked read refused the call), the whole reservation is decided again with the
        team's row locked from the start. So the quota is exact, and the team's row is held
        for one statement and the commit.
        """
        kwargs = {"team": team, "week": week, "default_quota": quota_micro_usd, "plan": plan}
        try:
            return await self._reserve(ref, call, lock_team=False, **kwargs)  # type: ignore[arg-type]
        except (_TeamContended, BudgetExceeded):
            call.id = None
            return await self._reserve(ref, call, lock_team=True, **kwargs)  # type: ignore[arg-type]

    async def _reserve(
        self,
        ref: OrderRef,
        call: LlmCall,
        *,
        team: str,
        week: str,
        default_quota: int,
        plan: Callable[[Headroom], CallPlan],
        lock_team: bool,
    ) -> tuple[LlmCall, CallPlan]:
        async with self.transaction() as s:
            conn = await s.connection()
            # The order's row, locked, with the team's week beside it (read, not locked: the
            # conditional charge below is what keeps the quota exact); a run's call is fenced
            # by its lease in the same statement (its attempt locked too).
            if call.attempt_id is not None:
                query = _FENCED_ORDER_AND_TEAM if self._sqlite else _FENCED_ORDER_AND_TEAM_LOCKED
                key = {"attempt_id": call.attempt_id}
            else:
                query = _ORDER_AND_TEAM if self._sqlite else _ORDER_AND_TEAM_LOCKED
                key = {"o_id": order_number(ref)}
            found = (await conn.execute(query, {**key, "team": team, "week": week})).first()
            if found is None:
                if call.attempt_id is not None:
                    raise NotFound(f"run attempt {call.attempt_id} does not exist")
                raise NotFound(f"{format_order_id(order_number(ref))} does not exist")
            (order_id, budget_json, o_spent, o_reserved, o_spent_tokens, o_reserved_tokens,
             model_calls, spend_id, t_spent, t_reserved, t_quota) = found[:11]  # fmt: skip
            if call.attempt_id is not None:
                status, lease_owner, number, worker, ended_at = found[11:]
                check_fence(
                    order_id=order_id,
                    status=status,
                    lease_owner=lease_owner,
                    attempt_number=number,
                    attempt_worker=worker,
                    attempt_ended=ended_at is not None,
                )
            if spend_id is None or lock_team:
                spend = await self._team_week(s, team, week)
                spend_id, t_quota = spend.id, spend.quota_micro_usd
                t_spent, t_reserved = spend.spent_micro_usd, spend.reserved_micro_usd
            quota = t_quota if t_quota is not None else default_quota
            budget = Budget.model_validate(budget_json)
            chosen = plan(
                Headroom(
                    order_micro_usd=usd_to_micro(budget.max_usd) - o_spent - o_reserved,
                    team_micro_usd=quota - t_spent - t_reserved,
                    tokens=budget.max_tokens - o_spent_tokens - o_reserved_tokens,
                    model_calls=budget.max_model_calls - model_calls,
                )
            )
            call.order_id = order_id
            call.reserved_micro_usd = chosen.reserve_micro_usd
            call.reserved_tokens = chosen.reserve_tokens
            call.team = team
            call.quota_week = week
            call.outcome = "pending"
            values = call.model_dump(exclude={"id"})
            # Last before the commit: the team's row, charged only if the reservation fits.
            params = {
                "o_id": order_id,
                "spend_id": spend_id,
                "default_quota": default_quota,
                "reserve": chosen.reserve_micro_usd,
                "reserve_tokens": chosen.reserve_tokens,
            }
            if self._sqlite:  # BEGIN IMMEDIATE: nothing else writes until the commit
                charged = (await conn.execute(_RESERVE_TEAM, params)).rowcount == 1
                if charged:
                    await conn.execute(_RESERVE_ORDER, params)
                    call.id = (await conn.execute(_INSERT_CALL, values)).scalar_one()
            else:
                params.update({f"c_{name}": value for name, value in values.items()})
                call.id = (await conn.execute(_RESERVE_ALL, params)).scalar()
                charged = call.id is not None
            if not charged:
                if lock_team:  # under the lock: the plan asked for more than the team has
                    raise BudgetExceeded(
                        "team_quota",
                        f"the team {team}'s quota for the week does not cover the call",
                    )
                raise _TeamContended()
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

        `usage` None means unknown (the call was cut off): the cost given is the worst case.

        One transaction of three statements on PostgreSQL: lock the order's row; settle the
        call (only if still pending) and move its reservation to spend on the order; append the
        audit event from the head this process last wrote, move the head and charge the team's
        week (if another process appended since, none of that happens, and it is done again
        after reading the head: a fourth statement). The team's row, which every run of the
        team shares, is locked by that last statement only, until the commit.
        """
        params: dict[str, Any] = {
            "call_id": call_id,
            "s_latency_ms": latency_ms,
            "s_error": error,
            "cost": cost_micro_usd,
            "tokens": tokens,
            "s_outcome": outcome,
            "s_provider": provider or None,
            "s_model": model or None,
            "s_input_tokens": None if usage is None else usage.input_tokens,
            "s_output_tokens": None if usage is None else usage.output_tokens,
            "s_cache_write_tokens": None if usage is None else usage.cache_write_tokens,
            "s_cache_read_tokens": None if usage is None else usage.cache_read_tokens,
        }
        async with self.engine.begin() as conn:  # Core only: no ORM session to set up
            # The order first (lock order: order, its calls, its chain's head, team's week).
            lock = _CALLS_ORDER if self._sqlite else _CALLS_ORDER_LOCKED
            order_id = (await conn.execute(lock, params)).scalar()
            if order_id is None:
                return False
            params["o_id"] = order_id
            if self._sqlite:
                settled = (await conn.execute(_SETTLE_CALL, params)).first()
                if settled is not None:
                    params["reserved"] = settled.reserved_micro_usd
                    params["s_reserved_tokens"] = settled.reserved_tokens
                    await conn.execute(_SETTLE_ORDER, params)
            else:
                settled = (await conn.execute(_SETTLE_BOTH, params)).first()
            if settled is None:
                return False  # settled already (or by the sweep of orphaned calls)
            also: list[Also] = []
            if settled.team is not None and settled.quota_week is not None:
                charge = _SETTLE_TEAM_SQLITE if self._sqlite else _SETTLE_TEAM_PG
                also.append(
                    (
                        charge,
                        _SETTLE_TEAM_IF_APPENDED,
                        {
                            "t_team": settled.team,
                            "t_week": settled.quota_week,
                            "t_reserved": settled.reserved_micro_usd,
                            "t_cost": cost_micro_usd,
                        },
                    )
                )
            chain = format_order_id(order_id)
            await self._append_on(
                conn, chain, actor="engine", kind="model_call",
                data=model_call_facts(settled), also=also,
            )  # fmt: skip
            if cost_micro_usd > settled.reserved_micro_usd:
                await self._append_on(
                    conn, chain, actor="engine", kind="reservation_overrun",
                    data={
                        "model_call": settled.id,
                        "reserved_micro_usd": settled.reserved_micro_usd,
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
        self,
        ref: OrderRef,
        *,
        max_tool_calls: int,
        attempt_id: int | None = None,
        status: str | None = None,
        status_coalesce_s: float = 0.0,
    ) -> bool:
        """Count one tool call if the ceiling allows it; False (nothing counted) otherwise.
        With `attempt_id`, LeaseLost if that attempt no longer holds the order's lease, and
        `status` (what the call does) shown on the order's status message in the same
        transaction, under the lock the fence took: one round trip less per tool call."""
        async with self.transaction() as s:
            if attempt_id is not None:
                row = await fenced_row(self, s, attempt_id)
            else:
                row = await self._row(s, ref, for_update=True)
            return await count_tool_call_in(
                s, row, ToolCount(max_tool_calls, status if attempt_id is not None else None, status_coalesce_s)
            )

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


class _TeamContended(Exception):
    """A reservation no longer fit the team's week when it came to charge it."""


# The hot paths' statements, built once (building and caching them per call cost more than
# the database did).
_ORDERS = WorkOrderRow.__table__  # type: ignore[attr-defined]
_SPENDS = TeamSpend.__table__  # type: ignore[attr-defined]
_CALLS = LlmCall.__table__  # type: ignore[attr-defined]
_ATTEMPTS = RunAttempt.__table__  # type: ignore[attr-defined]

_ORDER_AND_TEAM = (
    sa_select(
        _ORDERS.c.id, _ORDERS.c.budget, _ORDERS.c.spent_micro_usd, _ORDERS.c.reserved_micro_usd,
        _ORDERS.c.spent_tokens, _ORDERS.c.reserved_tokens, _ORDERS.c.model_calls,
        _SPENDS.c.id, _SPENDS.c.spent_micro_usd, _SPENDS.c.reserved_micro_usd,
        _SPENDS.c.quota_micro_usd,
    )
    .select_from(
        _ORDERS.outerjoin(
            _SPENDS,
            and_(_SPENDS.c.team == bindparam("team"), _SPENDS.c.week == bindparam("week")),
        )
    )
    .where(_ORDERS.c.id == bindparam("o_id"))
)  # fmt: skip
_ORDER_AND_TEAM_LOCKED = _ORDER_AND_TEAM.with_for_update(of=_ORDERS)
_FENCED_ORDER_AND_TEAM = (
    sa_select(
        *_ORDER_AND_TEAM.selected_columns,
        _ORDERS.c.status, _ORDERS.c.lease_owner,
        _ATTEMPTS.c.number, _ATTEMPTS.c.worker_id, _ATTEMPTS.c.ended_at,
    )
    .select_from(
        _ORDERS.join(_ATTEMPTS, _ATTEMPTS.c.order_id == _ORDERS.c.id).outerjoin(
            _SPENDS,
            and_(_SPENDS.c.team == bindparam("team"), _SPENDS.c.week == bindparam("week")),
        )
    )
    .where(_ATTEMPTS.c.id == bindparam("attempt_id"))
)  # fmt: skip
"""A run's reservation read: its order and the team's week, with what fences it (the order's
lease and its attempt, as `fenced_row` reads them)."""
# Order and attempt both locked, as fenced_row locks them; the team's week is not.
_FENCED_ORDER_AND_TEAM_LOCKED = _FENCED_ORDER_AND_TEAM.with_for_update(of=(_ORDERS, _ATTEMPTS))
_INSERT_CALL = insert(_CALLS).returning(_CALLS.c.id)
_RESERVE_TEAM = (
    update(_SPENDS)
    .where(
        _SPENDS.c.id == bindparam("spend_id"),
        func.coalesce(_SPENDS.c.quota_micro_usd, bindparam("default_quota"))
        - _SPENDS.c.spent_micro_usd
        - _SPENDS.c.reserved_micro_usd
        >= bindparam("reserve"),
    )
    .values(reserved_micro_usd=_SPENDS.c.reserved_micro_usd + bindparam("reserve"))
)
_RESERVE_ORDER = (
    update(_ORDERS)
    .where(_ORDERS.c.id == bindparam("o_id"))
    .values(
        reserved_micro_usd=_ORDERS.c.reserved_micro_usd + bindparam("reserve"),
        reserved_tokens=_ORDERS.c.reserved_tokens + bindparam("reserve_tokens"),
        model_calls=_ORDERS.c.model_calls + 1,
    )
)
_charged_team = _RESERVE_TEAM.returning(_SPENDS.c.id).cte("charged_team")
_RESERVE_BOTH = (
    _RESERVE_ORDER.where(sa_select(_charged_team.c.id).exists())
    .returning(_ORDERS.c.id)
    .add_cte(_charged_team)
)
"""PostgreSQL: the team's conditional charge and the order's, one statement."""
_charged_order = _RESERVE_BOTH.cte("charged_order")
_CALL_COLUMNS = [c for c in _CALLS.c if c.name != "id"]
_RESERVE_ALL = (
    insert(_CALLS)
    .from_select(
        _CALL_COLUMNS,
        sa_select(*(bindparam(f"c_{c.name}", type_=c.type) for c in _CALL_COLUMNS)).where(
            sa_select(_charged_order.c.id).exists()
        ),
    )
    .returning(_CALLS.c.id)
    .add_cte(_charged_order)
)
"""PostgreSQL: charge the team (if the reservation fits), the order, and record the call as
pending, in one statement; no row comes back if the team's week could not take it."""

_calls_order = sa_select(_CALLS.c.order_id).where(_CALLS.c.id == bindparam("call_id"))
_CALLS_ORDER = sa_select(_ORDERS.c.id).where(_ORDERS.c.id == _calls_order.scalar_subquery())
_CALLS_ORDER_LOCKED = _CALLS_ORDER.with_for_update()
_SETTLED = (
    "id", "order_id", "role", "provider", "model", "input_tokens", "output_tokens",
    "cache_write_tokens", "cache_read_tokens", "cost_micro_usd", "outcome",
    "reserved_micro_usd", "reserved_tokens", "team", "quota_week",
)  # fmt: skip
"""What settling a call reads back: its audit facts and what it held back, and where."""
_kept: dict[str, Any] = {
    name: func.coalesce(bindparam(f"s_{name}"), _CALLS.c[name])
    for name in (
        "provider", "model", "input_tokens", "output_tokens", "cache_write_tokens",
        "cache_read_tokens",
    )
}  # fmt: skip
_SETTLE_CALL = (
    update(_CALLS)
    .where(_CALLS.c.id == bindparam("call_id"), _CALLS.c.outcome == "pending")
    .values(
        latency_ms=bindparam("s_latency_ms"),
        error=bindparam("s_error"),
        cost_micro_usd=bindparam("cost"),
        outcome=bindparam("s_outcome"),
        **_kept,
    )
    .returning(*(_CALLS.c[name] for name in _SETTLED))
)
_SETTLE_ORDER = (
    update(_ORDERS)
    .where(_ORDERS.c.id == bindparam("o_id"))
    .values(
        reserved_micro_usd=_ORDERS.c.reserved_micro_usd - bindparam("reserved"),
        spent_micro_usd=_ORDERS.c.spent_micro_usd + bindparam("cost"),
        reserved_tokens=_ORDERS.c.reserved_tokens - bindparam("s_reserved_tokens"),
        spent_tokens=_ORDERS.c.spent_tokens + bindparam("tokens"),
    )
)
_settled = _SETTLE_CALL.cte("settled")
_SETTLE_BOTH = (
    update(_ORDERS)
    .where(_ORDERS.c.id == _settled.c.order_id)
    .values(
        reserved_micro_usd=_ORDERS.c.reserved_micro_usd - _settled.c.reserved_micro_usd,
        spent_micro_usd=_ORDERS.c.spent_micro_usd + bindparam("cost"),
        reserved_tokens=_ORDERS.c.reserved_tokens - _settled.c.reserved_tokens,
        spent_tokens=_ORDERS.c.spent_tokens + bindparam("tokens"),
    )
    .returning(*(_settled.c[name] for name in _SETTLED))
    .add_cte(_settled)
)
"""PostgreSQL: settle the call and charge its order, one statement."""


def _settle_team(insert: Any, *, only_if_appended: bool = False) -> UpdateBase:
    """The team's week: the reservation swapped for the cost (created if missing, as before).
    `only_if_appended` (PostgreSQL): made only if the settlement's audit event is appended (it
    selects from `HEAD_MOVED`, see `Also`), so that it rides in the append's one statement even
    when that guesses the head."""
    row = {
        "team": bindparam("t_team", type_=_SPENDS.c.team.type),
        "week": bindparam("t_week", type_=_SPENDS.c.week.type),
        "spent_micro_usd": bindparam("t_cost", type_=BigInteger),
        "reserved_micro_usd": -bindparam("t_reserved", type_=BigInteger),
    }
    statement = insert(_SPENDS)
    if only_if_appended:
        statement = statement.from_select(list(row), sa_select(*row.values()).select_from(HEAD_MOVED))
    else:
        statement = statement.values(row)
    return statement.on_conflict_do_update(
        index_elements=[_SPENDS.c.team, _SPENDS.c.week],
        set_={
            "reserved_micro_usd": _SPENDS.c.reserved_micro_usd - bindparam("t_reserved"),
            "spent_micro_usd": _SPENDS.c.spent_micro_usd + bindparam("t_cost"),
        },
    )


_SETTLE_TEAM_PG = _settle_team(pg_insert)
_SETTLE_TEAM_SQLITE = _settle_team(sqlite_insert)
_SETTLE_TEAM_IF_APPENDED = _settle_team(pg_insert, only_if_appended=True)
