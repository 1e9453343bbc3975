"""Where the budget is enforced: worst-case reservations before a model call, settlement after.

Money is integer micro-dollars. A price in USD per million tokens is exactly micro-dollars per
token, so `tokens * price` is the cost in micro-dollars; reservations round up, and a settled
cost can never exceed the reservation it replaces because every usage kind is priced at or
below the worst-case rate the reservation used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

from workers.config import Price, Settings
from workers.errors import BudgetExceeded
from workers.models import LlmCall, utcnow
from workers.workorder import Budget

if TYPE_CHECKING:
    # Imported for annotations only: workers.providers imports this module at runtime.
    from workers.providers.base import ModelRequest, Usage

MICRO = 1_000_000

# Tokens a provider adds around what we send: tool-use system prompt, role markers, tool schemas.
# Generous on purpose: an underestimate would let a call cost more than it reserved.
FIXED_OVERHEAD_TOKENS = 1024
PER_MESSAGE_OVERHEAD_TOKENS = 16
PER_TOOL_OVERHEAD_TOKENS = 64


def usd_to_micro(usd: float) -> int:
    return int((Decimal(str(usd)) * MICRO).to_integral_value())


def micro_to_usd(micro: int) -> float:
    return micro / MICRO


def _rate(usd_per_million: float) -> Decimal:
    return Decimal(str(usd_per_million))


def call_cost_micro_usd(price: Price, usage: Usage) -> int:
    """What a call cost, rounded up to the micro-dollar."""
    exact = (
        usage.input_tokens * _rate(price.input)
        + usage.output_tokens * _rate(price.output)
        + usage.cache_write_tokens * _rate(price.cache_write)
        + usage.cache_read_tokens * _rate(price.cache_read)
    )
    return math.ceil(exact)


def worst_input_rate(price: Price) -> Decimal:
    """Input may be billed plain, as a cache write or a cache read: the dearest of them."""
    return max(_rate(price.input), _rate(price.cache_write), _rate(price.cache_read))


def worst_case_micro_usd(price: Price, input_tokens: int, max_output_tokens: int) -> int:
    exact = input_tokens * worst_input_rate(price) + max_output_tokens * _rate(price.output)
    return math.ceil(exact)


def quota_week(now: datetime) -> str:
    """The quota week a moment falls in: the ISO date of its Monday (UTC)."""
    day = now.astimezone(UTC).date()
    return (day - timedelta(days=day.weekday())).isoformat()


# Counting input tokens.


def _size(value: object) -> int:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return len(text.encode())


def estimate_input_tokens(request: ModelRequest) -> int:
    """An upper bound on the request's input tokens.

    Byte-level BPE tokenizers never emit more tokens than UTF-8 bytes, so bytes plus a generous
    framing overhead bound the count from above without a provider round trip.
    """
    tools = [
        {"name": t.name, "description": t.description, "input_schema": t.input_schema}
        for t in request.tools
    ]
    return (
        _size(request.system)
        + _size(request.messages)
        + (_size(tools) if tools else 0)
        + FIXED_OVERHEAD_TOKENS
        + PER_MESSAGE_OVERHEAD_TOKENS * len(request.messages)
        + PER_TOOL_OVERHEAD_TOKENS * len(tools)
    )


@dataclass
class PromptMeter:
    """Tightens the byte bound with what the provider reported for the previous call.

    An agent's conversation only grows, so the next prompt is the previous one (whose token
    count the provider told us) plus the new messages (bounded by their bytes).
    """

    model: str = ""
    system: str = ""
    tool_names: tuple[str, ...] = ()
    message_count: int = 0
    prefix_bytes: int = 0
    prompt_tokens: int = 0

    def estimate(self, request: ModelRequest, model: str) -> int:
        """Upper bound on input tokens for `request` sent to `model`.

        Only a count from the same model refines the bound: tokenizers differ between models,
        so after a failover the byte bound applies again.
        """
        bound = estimate_input_tokens(request)
        n = self.message_count
        if (
            self.prompt_tokens
            and model == self.model
            and request.system == self.system
            and tuple(t.name for t in request.tools) == self.tool_names
            and len(request.messages) >= n
            and _size(request.messages[:n]) == self.prefix_bytes
        ):
            new = request.messages[n:]
            delta = _size(new) + PER_MESSAGE_OVERHEAD_TOKENS * len(new) if new else 0
            # 2 % slack for tokenization differences at the seam.
            refined = math.ceil(self.prompt_tokens * 1.02) + delta + PER_MESSAGE_OVERHEAD_TOKENS
            return min(bound, refined)
        return bound

    def observe(self, request: ModelRequest, usage: Usage, model: str) -> None:
        self.model = model
        self.system = request.system
        self.tool_names = tuple(t.name for t in request.tools)
        self.message_count = len(request.messages)
        self.prefix_bytes = _size(request.messages)
        self.prompt_tokens = usage.prompt_tokens


# Planning a call against what is left.


@dataclass(frozen=True)
class Headroom:
    """What an order (and its team) may still spend, net of settled spend and reservations."""

    order_micro_usd: int
    team_micro_usd: int
    tokens: int
    model_calls: int


@dataclass(frozen=True)
class CallPlan:
    max_output_tokens: int
    reserve_micro_usd: int
    reserve_tokens: int
    searches: int = 0
    """Web searches the call may make (each reserved at its price within reserve_micro_usd)."""


def plan_call(
    headroom: Headroom,
    *,
    price: Price,
    input_tokens: int,
    want_output_tokens: int,
    min_output_tokens: int,
    searches: int = 0,
    search_micro_usd: int = 0,
) -> CallPlan:
    """Fit one call into the headroom, lowering max output tokens if needed, and then as many
    of the `searches` wanted (each at `search_micro_usd`) as the money left over covers.

    Raises BudgetExceeded naming the binding limit when not even `min_output_tokens` fit.
    """
    if headroom.model_calls <= 0:
        raise BudgetExceeded("model_calls", "the order has used all of its model calls")
    floor = max(1, min(min_output_tokens, want_output_tokens))
    if searches and search_micro_usd:
        spare = min(headroom.order_micro_usd, headroom.team_micro_usd) - math.ceil(
            input_tokens * worst_input_rate(price) + floor * _rate(price.output)
        )
        searches = max(0, min(searches, spare // search_micro_usd))
    fixed = searches * search_micro_usd
    input_cost = math.ceil(input_tokens * worst_input_rate(price)) + fixed
    out_rate = _rate(price.output)

    def outputs_within(micro_left: int) -> int:
        spare = micro_left - input_cost
        if spare < 0:
            return -1
        if out_rate == 0:
            return want_output_tokens
        return int(Decimal(spare) / out_rate)

    fits = {
        "usd": outputs_within(headroom.order_micro_usd),
        "team_quota": outputs_within(headroom.team_micro_usd),
        "tokens": headroom.tokens - input_tokens,
    }
    limit, most = min(fits.items(), key=lambda item: item[1])
    if most < floor:
        needed = input_cost + math.ceil(floor * out_rate)
        raise BudgetExceeded(
            limit, _stop_message(limit, headroom, input_tokens), needed_micro_usd=needed
        )
    max_output = min(want_output_tokens, most)
    return CallPlan(
        max_output_tokens=max_output,
        reserve_micro_usd=worst_case_micro_usd(price, input_tokens, max_output) + fixed,
        reserve_tokens=input_tokens + max_output,
        searches=searches,
    )


def _stop_message(limit: str, headroom: Headroom, input_tokens: int) -> str:
    if limit == "usd":
        left = micro_to_usd(max(0, headroom.order_micro_usd))
        return f"the order's USD budget is spent (${left:.4f} left, not enough for another step)"
    if limit == "team_quota":
        left = micro_to_usd(max(0, headroom.team_micro_usd))
        return f"the team's weekly quota is spent (${left:.4f} left this week)"
    return (
        f"the order's token budget is spent ({max(0, headroom.tokens)} tokens left, "
        f"the next step needs about {input_tokens} input tokens)"
    )


@dataclass(frozen=True)
class ToolCount:
    """One tool call to count against the order's ceiling, and the status it shows (what the
    call does, coalesced as a run's steps are)."""

    max_tool_calls: int
    status: str | None = None
    coalesce_s: float = 0.0


@dataclass
class Reservation:
    call_id: int
    max_output_tokens: int
    reserved_micro_usd: int
    reserved_tokens: int
    price: Price
    searches: int = 0
    search_micro_usd: int = 0


class SpendLedger(Protocol):
    """Where reservations and settlements are kept (workers.store.Store). A protocol, so that
    this module need not import the store, which imports it."""

    async def reserve_spend(
        self,
        ref: str | int,
        *,
        team: str,
        week: str,
        quota_micro_usd: int,
        plan: Callable[[Headroom], CallPlan],
        call: LlmCall,
    ) -> tuple[LlmCall, CallPlan]: ...

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
    ) -> bool: ...

    async def count_tool_call(
        self,
        ref: str | int,
        *,
        max_tool_calls: int,
        attempt_id: int | None = None,
        status: str | None = None,
        status_coalesce_s: float = 0.0,
    ) -> bool: ...


class BudgetGuard:
    """One run's handle on its order's budget, held in the database so every process agrees."""

    def __init__(
        self,
        store: SpendLedger,
        settings: Settings,
        *,
        order_number: int,
        team: str,
        budget: Budget,
        attempt_id: int | None = None,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.settings = settings
        self.order_number = order_number
        self.team = team
        self.budget = budget
        self.attempt_id = attempt_id
        self.now = now
        self.meter = PromptMeter()
        self.overrun: tuple[int, int] | None = None
        """(cost, reserved) of a settled call that cost more than was held back for it."""

    @property
    def team_quota_micro_usd(self) -> int:
        team = self.settings.teams.get(self.team) or self.settings.teams["default"]
        return usd_to_micro(team.weekly_usd)

    def estimate_input_tokens(self, request: ModelRequest, model: str) -> int:
        return self.meter.estimate(request, model)

    async def reserve(
        self,
        *,
        role: str,
        provider: str,
        model: str,
        input_tokens: int,
        want_output_tokens: int,
        searches: int = 0,
        search_micro_usd: int = 0,
    ) -> Reservation:
        """Hold back the call's worst case atomically, or raise BudgetExceeded. With `searches`,
        also up to that many web searches at `search_micro_usd` each, as many as the budget
        covers (`Reservation.searches`; the call must not make more)."""
        if self.overrun is not None:
            # The worst case was not the worst case: no further call is safe to make.
            cost, reserved = self.overrun
            raise BudgetExceeded(
                "usd",
                f"a model call cost ${micro_to_usd(cost):.4f}, more than the "
                f"${micro_to_usd(reserved):.4f} reserved for it, so the run stopped before "
                "the next call; check the model's price in the configuration",
            )
        price = self.settings.price(model)
        min_output = self.settings.engine.min_output_tokens

        def plan(headroom: Headroom) -> CallPlan:
            return plan_call(
                headroom,
                price=price,
                input_tokens=input_tokens,
                want_output_tokens=want_output_tokens,
                min_output_tokens=min_output,
                searches=searches,
                search_micro_usd=search_micro_usd,
            )

        call = LlmCall(
            order_id=self.order_number,
            attempt_id=self.attempt_id,
            role=role,
            provider=provider,
            model=model,
            outcome="pending",
        )
        call, chosen = await self.store.reserve_spend(
            self.order_number,
            team=self.team,
            week=quota_week(self.now()),
            quota_micro_usd=self.team_quota_micro_usd,
            plan=plan,
            call=call,
        )
        assert call.id is not None
        return Reservation(
            call_id=call.id,
            max_output_tokens=chosen.max_output_tokens,
            reserved_micro_usd=chosen.reserve_micro_usd,
            reserved_tokens=chosen.reserve_tokens,
            price=price,
            searches=chosen.searches,
            search_micro_usd=search_micro_usd,
        )

    async def settle(
        self,
        reservation: Reservation,
        *,
        usage: Usage | None,
        outcome: str,
        latency_ms: int,
        provider: str | None = None,
        model: str | None = None,
        error: str | None = None,
    ) -> int:
        """Replace the reservation with the actual cost; unknown usage is charged in full."""
        if usage is None:
            cost, tokens = reservation.reserved_micro_usd, reservation.reserved_tokens
        else:
            cost, tokens = call_cost_micro_usd(reservation.price, usage), usage.total_tokens
            cost += usage.web_search_requests * reservation.search_micro_usd
        await self.store.settle_spend(
            reservation.call_id,
            cost_micro_usd=cost,
            tokens=tokens,
            usage=usage,
            outcome=outcome,
            latency_ms=latency_ms,
            provider=provider,
            model=model,
            error=error,
        )
        if cost > reservation.reserved_micro_usd and self.overrun is None:
            self.overrun = (cost, reservation.reserved_micro_usd)
        return cost

    def tool_count(self, *, status: str | None = None, coalesce_s: float = 0.0) -> ToolCount:
        """A tool call to count, written with the rest of the run's step (`RunsStore.save_step`);
        a count the ceiling refused is `tool_calls_used_up()`."""
        return ToolCount(self.budget.max_tool_calls, status, coalesce_s)

    def tool_calls_used_up(self) -> BudgetExceeded:
        return BudgetExceeded(
            "tool_calls", f"the order has used all of its {self.budget.max_tool_calls} tool calls"
        )

    async def charge_tool_call(self, *, status: str | None = None, coalesce_s: float = 0.0) -> None:
        """Count one tool call against the ceiling; `status` (what the call does) is shown on the
        order's status message in the same transaction (coalesced as a run's steps are)."""
        if not await self.store.count_tool_call(
            self.order_number,
            max_tool_calls=self.budget.max_tool_calls,
            attempt_id=self.attempt_id,
            status=status,
            status_coalesce_s=coalesce_s,
        ):
            raise self.tool_calls_used_up()
