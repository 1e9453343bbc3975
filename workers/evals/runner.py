"""Running suites: each case through the real intake engine or verifier, on each route, at most
`concurrency` at once, every call charged to the run's budget, every finished case appended to
the run file (`results.jsonl`) so that a second run with the same directory skips it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from workers.budget import BudgetGuard
from workers.config import Role, Settings
from workers.dialogue import questions_text
from workers.errors import BudgetExceeded, ProviderRejected, ProviderUnavailable, RetryLater
from workers.evals.cases import IntakeCase, Suite, VerifyCase
from workers.evals.ledger import EvalLedger, case_guard, eval_settings
from workers.evals.routes import Variant
from workers.intake import (
    ChatAnswer,
    Draft,
    IntakeEngine,
    IntakeUnavailable,
    Questions,
    RequesterContext,
    Turn,
)
from workers.providers import ModelReply, ModelRequest, ModelRouter
from workers.verify import verify
from workers.workorder import WorkloadClass, WorkOrder

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
EVAL_USER = "UEVAL"
Status = Literal["done", "error", "not_run"]
RouterFactory = Callable[[Settings], ModelRouter]


@dataclass(frozen=True)
class Job:
    suite: Suite
    variant: Variant
    case: IntakeCase | VerifyCase

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.suite.name, self.variant.label, self.case.id)


@dataclass
class Record:
    """One line of the run file."""

    suite: str
    route: str
    case: str
    status: Status
    outcome: dict[str, Any] | None = None
    cost_micro_usd: int = 0
    latency_ms: int = 0
    error: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.suite, self.route, self.case)

    def line(self) -> str:
        return json.dumps(self.__dict__, ensure_ascii=False) + "\n"


@dataclass
class RunState:
    """The run file read back: the latest record per case, and all money spent in it."""

    records: dict[tuple[str, str, str], Record] = field(default_factory=dict)
    spent_micro_usd: int = 0


def read_results(path: Path) -> RunState:
    state = RunState()
    if not path.exists():
        return state
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = Record(**json.loads(line))
        except (ValueError, TypeError):
            continue  # a line cut short by a crash: that case runs again
        state.records[record.key] = record
        state.spent_micro_usd += record.cost_micro_usd
    return state


@dataclass
class RunOutcome:
    state: RunState
    ran: int
    skipped: int
    budget_stopped: bool
    max_micro_usd: int


class _Charged:
    """The intake engine's completer: the router, with the case's guard on every call (intake
    in production is charged to the requester's team; here, to the eval's budget)."""

    def __init__(self, router: ModelRouter, guard: BudgetGuard) -> None:
        self.router = router
        self.guard = guard

    async def complete(
        self,
        role: Role,
        workload_class: WorkloadClass | str,
        request: ModelRequest,
        *,
        requester: str | None = None,
    ) -> ModelReply:
        return await self.router.complete(role, workload_class, request, budget=self.guard)


async def intake_outcome(
    case: IntakeCase, settings: Settings, router: ModelRouter, guard: BudgetGuard
) -> dict[str, Any]:
    """The conversation as the Slack dialogue holds it: the engine's questions are answered
    with the case's scripted answers while they last; rounds are counted as the dialogue does."""
    engine = IntakeEngine(settings, _Charged(router, guard))
    turns = [Turn(t.role, t.text) for t in case.thread] + [Turn("requester", case.request)]
    rounds = sum(t.role == "delegate" for t in case.thread)
    ctx = RequesterContext(user_id=EVAL_USER, channel=None, context=case.context)
    answers = list(case.answers)
    first: str | None = None
    first_questions: list[str] = []
    used = 0
    while True:
        outcome = await engine.step(turns, ctx, rounds_so_far=rounds)
        kind = _kind(outcome)
        if first is None:
            first = kind
            if isinstance(outcome, Questions):
                first_questions = outcome.questions
        if isinstance(outcome, Questions):
            rounds += 1
            used += 1
            if answers:
                turns += [
                    Turn("delegate", questions_text(outcome.questions)),
                    Turn("requester", answers.pop(0)),
                ]
                continue
        break
    result: dict[str, Any] = {
        "decision": first,
        "questions": first_questions,
        "rounds": used,
        "final": kind,
        "draft": None,
    }
    if isinstance(outcome, Draft):
        order = outcome.order
        result["draft"] = {
            "title": order.title,
            "workload_class": order.workload_class.value,
            "deliverable": order.deliverable,
            "criteria": order.acceptance_criteria,
        }
    elif isinstance(outcome, ChatAnswer):
        result["answer"] = outcome.text[:1000]
    else:
        result["last_questions"] = outcome.questions
    return result


def _kind(outcome: Questions | ChatAnswer | Draft) -> str:
    if isinstance(outcome, Questions):
        return "ask"
    return "chat" if isinstance(outcome, ChatAnswer) else "draft"


def verify_order(case: VerifyCase, settings: Settings, number: int) -> WorkOrder:
    return WorkOrder(
        id=f"WO-{number}",
        title=case.title[:200],
        requester=EVAL_USER,
        goal=case.goal,
        deliverable=case.deliverable_spec,
        acceptance_criteria=[c.text for c in case.criteria],
        budget=settings.budgets[case.workload_class],
        workload_class=case.workload_class,
    )


async def verify_outcome(
    case: VerifyCase, settings: Settings, router: ModelRouter, guard: BudgetGuard, number: int
) -> dict[str, Any]:
    order = verify_order(case, settings, number)
    report = await verify(router, order, case.deliverable, budget=guard)
    return {
        "passed": [v.passed for v in report.verdicts],
        "reasons": [v.reason for v in report.verdicts],
    }


def default_router(settings: Settings) -> ModelRouter:
    # Every eval call carries a guard, so the router charges through it and never writes the
    # production ledger: it needs no store.
    return ModelRouter.from_settings(settings, cast(Any, None))


async def run(
    suites: Sequence[Suite],
    variants: dict[Role, list[Variant]],
    *,
    out_dir: Path,
    max_micro_usd: int,
    concurrency: int,
    router_factory: RouterFactory = default_router,
) -> RunOutcome:
    path = out_dir / RESULTS
    state = await asyncio.to_thread(_open_run, out_dir)
    jobs = [
        Job(suite, variant, case)
        for suite in suites
        for variant in variants[suite.kind]
        for case in suite.cases
    ]
    pending = [j for j in jobs if _status(state, j.key) != "done"]
    ledger = EvalLedger(max_micro_usd, spent_before_micro_usd=state.spent_micro_usd)
    kinds = {suite.kind for suite in suites}
    routers = {
        (v.role, v.label): router_factory(eval_settings(v.settings))
        for role, vs in variants.items()
        if role in kinds
        for v in vs
    }
    gate = asyncio.Semaphore(concurrency)
    stopped = asyncio.Event()
    if ledger.left_micro_usd <= 0 and pending:
        stopped.set()
    lock = asyncio.Lock()

    async def one(number: int, job: Job) -> None:
        async with gate:
            if stopped.is_set():
                record = Record(*job.key, status="not_run", error="the budget is spent")
            else:
                router = routers[(job.variant.role, job.variant.label)]
                record = await _run_job(job, number, router, ledger)
                if record.status == "not_run":
                    stopped.set()
            async with lock:
                with path.open("a") as f:
                    f.write(record.line())
                state.records[record.key] = record
                state.spent_micro_usd += record.cost_micro_usd

    try:
        await asyncio.gather(*(one(n, job) for n, job in enumerate(pending, 1)))
    finally:
        for router in routers.values():
            await router.close()
    return RunOutcome(
        state,
        ran=len(pending),
        skipped=len(jobs) - len(pending),
        budget_stopped=stopped.is_set(),
        max_micro_usd=max_micro_usd,
    )


def _open_run(out_dir: Path) -> RunState:
    out_dir.mkdir(parents=True, exist_ok=True)
    return read_results(out_dir / RESULTS)


def _status(state: RunState, key: tuple[str, str, str]) -> Status | None:
    record = state.records.get(key)
    return record.status if record else None


async def _run_job(job: Job, number: int, router: ModelRouter, ledger: EvalLedger) -> Record:
    settings = eval_settings(job.variant.settings)
    guard = case_guard(ledger, settings, number)
    started = time.monotonic()
    status: Status = "done"
    outcome: dict[str, Any] | None = None
    error: str | None = None
    try:
        if isinstance(job.case, IntakeCase):
            outcome = await intake_outcome(job.case, settings, router, guard)
        else:
            outcome = await verify_outcome(job.case, settings, router, guard, number)
    except BudgetExceeded:
        status, error = "not_run", "the budget is spent"
    except IntakeUnavailable as exc:
        if isinstance(exc.__cause__, BudgetExceeded):
            status, error = "not_run", "the budget is spent"
        else:
            status, error = "error", _reason(exc.__cause__ or exc)
    except (ProviderRejected, ProviderUnavailable, RetryLater) as exc:
        status, error = "error", _reason(exc)
    except Exception as exc:
        # One broken case (a bug, an unexpected answer) is reported; the others still run.
        log.exception("eval case %s failed", job.case.id)
        status, error = "error", f"{type(exc).__name__}: {_reason(exc)}"
    latency_ms = int((time.monotonic() - started) * 1000)
    return Record(
        *job.key,
        status=status,
        outcome=outcome,
        cost_micro_usd=ledger.by_case.get(number, 0),
        latency_ms=latency_ms,
        error=error,
    )


def _reason(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:300]
