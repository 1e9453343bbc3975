"""The eval run's money: every model call reserved and settled as any call is, against the
run's `--max-usd` instead of an order and a team.

The router charges a call through a `BudgetGuard` (worst case reserved before it is sent,
actual cost settled after, each failover attempt too). That guard keeps its figures in a
`SpendLedger`; this is one held in memory, so an eval neither needs nor touches the
production ledger, and it knows what each case cost.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from workers.budget import BudgetGuard, CallPlan, Headroom
from workers.config import Settings
from workers.models import LlmCall
from workers.workorder import Budget

# Calls per case are bounded by the engine (intake rounds, one verifier call), not by this.
_UNBOUNDED = 10**12


class EvalLedger:
    """A `SpendLedger` over one budget; `ref` is the case's number in the run."""

    def __init__(self, max_micro_usd: int, *, spent_before_micro_usd: int = 0) -> None:
        self.max_micro_usd = max_micro_usd
        self.spent_micro_usd = spent_before_micro_usd
        self.reserved_micro_usd = 0
        self.by_case: dict[int, int] = defaultdict(int)
        self._calls: dict[int, tuple[int, int]] = {}  # call id -> (case, reserved)
        self._next_id = 1

    @property
    def left_micro_usd(self) -> int:
        return self.max_micro_usd - self.spent_micro_usd - self.reserved_micro_usd

    async def reserve_spend(
        self,
        ref: str | int,
        *,
        team: str,
        week: str,
        quota_micro_usd: int,
        plan: Callable[[Headroom], CallPlan],
        call: LlmCall,
    ) -> tuple[LlmCall, CallPlan]:
        # No await between reading the headroom and holding it: atomic on the event loop.
        left = self.left_micro_usd
        chosen = plan(Headroom(left, left, _UNBOUNDED, _UNBOUNDED))  # raises BudgetExceeded
        call.id = self._next_id
        self._next_id += 1
        self._calls[call.id] = (int(ref), chosen.reserve_micro_usd)
        self.reserved_micro_usd += chosen.reserve_micro_usd
        return call, chosen

    async def settle_spend(self, call_id: int, *, cost_micro_usd: int, **_: Any) -> bool:
        case, reserved = self._calls.pop(call_id)
        self.reserved_micro_usd -= reserved
        self.spent_micro_usd += cost_micro_usd
        self.by_case[case] += cost_micro_usd
        return True

    async def count_tool_call(
        self,
        ref: str | int,
        *,
        max_tool_calls: int,
        attempt_id: int | None = None,
        status: str | None = None,
        status_coalesce_s: float = 0.0,
    ) -> bool:
        return True  # the suites' calls use no tools


def eval_settings(settings: Settings) -> Settings:
    """The settings a case's guard plans with: a call gets the output tokens it asks for or is
    not sent (a shortened answer would be scored as the model's)."""
    engine = settings.engine.model_copy(update={"min_output_tokens": 1_000_000})
    return settings.model_copy(update={"engine": engine})


def case_guard(ledger: EvalLedger, settings: Settings, case_number: int) -> BudgetGuard:
    # The guard takes its headroom from the ledger; this envelope only bounds tool calls.
    budget = Budget(
        max_usd=1.0,
        max_tokens=_UNBOUNDED,
        max_wall_clock_s=86_400,
        max_tool_calls=0,
        max_model_calls=1_000,
    )
    return BudgetGuard(ledger, settings, order_number=case_number, team="eval", budget=budget)
