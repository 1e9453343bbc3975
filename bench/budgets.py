"""Budgets: randomized runs against order budgets and one shared team quota, and a naive
check-after-spend limiter on the same workload for comparison.

    python -m bench.budgets [--url postgresql+asyncpg://postgres@127.0.0.1:5432/test]
                            [--runs 1000] [--shared 0.3] [--quota 2.0] [--workers 2]
                            [--concurrency 16] [--latency 0.2] [--seed 1]

A scratch PostgreSQL database gets `--runs` queued orders, each with a random spend ceiling
(max_usd between $0.02 and $0.15); a `--shared` share of them is charged to team `shared`,
whose weekly quota is `--quota` USD, so that many of them run at once against it. `--workers`
`delegate worker` processes run them. The fake model (tests/fakes/anthropic.py, real HTTP)
reads the thread 1 to 8 times before submitting (random per order), and reports usage of up to
one token per byte of the request: each order draws a tokens-per-byte ratio in (0.25, 1.0] and
every call reports ceil(ratio x bytes of the request body re-serialized as JSON) input tokens
(one tokenizer per run, as a real model has) and a random 1..max_tokens output tokens.

Figures: max(spent / ceiling) over the orders and over the team quotas (settled spend; nothing
may be left reserved), calls that cost more than their reservation, and how the runs ended.

Then the same workload through a naive limiter simulated in this script (no database, no
reservations): before each call it checks that spend so far is under the order's ceiling and
the team's quota, makes the call (sleeps the latency) and adds its cost afterwards. Its calls
cost what the same order's calls cost under Delegate (the request bytes of the k-th call are
taken from what the fake saw), with the same number of runs at once. Its max(spent / ceiling)
shows by how much a check-after-spend limiter overshoots. Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import select

from bench._setup import (
    MODEL,
    add_url_argument,
    bench_env,
    fake_servers,
    load_average,
    machine,
    queue_orders,
    scratch_database,
    wait_settled,
)
from tests.fakes.anthropic import Reply
from tests.support.processes import kill_worker, spawn_worker, stop_worker
from workers.budget import call_cost_micro_usd, quota_week, usd_to_micro
from workers.config import load_settings
from workers.models import LlmCall, TeamSpend, WorkOrderRow, utcnow
from workers.providers import Usage
from workers.store import Store
from workers.workorder import Budget

ORDER_RE = re.compile(r"Bench order (\d+)")


@dataclass
class Workload:
    """Per order: ceiling, team, reads before submitting, tokens per byte (seeded)."""

    seed: int
    runs: int
    shared: float
    ceilings: list[float] = field(default_factory=list)
    teams: list[str] = field(default_factory=list)
    reads: list[int] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        for _ in range(self.runs):
            self.ceilings.append(round(rng.uniform(0.02, 0.15), 4))
            self.teams.append("shared" if rng.random() < self.shared else "default")
            self.reads.append(rng.randint(1, 8))
            self.ratios.append(rng.uniform(0.25, 1.0) if rng.random() < 0.8 else 1.0)


class BudgetModel:
    """The fake model's script for this workload; records request bytes per order and call."""

    def __init__(self, workload: Workload, latency_s: float) -> None:
        self.workload = workload
        self.latency_s = latency_s
        self.rng = random.Random(workload.seed + 1)
        self.bytes: dict[int, list[int]] = defaultdict(list)
        self.output: dict[int, list[int]] = defaultdict(list)

    def reply(self, body: dict[str, Any]) -> Reply:
        text = json.dumps(body)
        found = ORDER_RE.search(text)
        n = int(found.group(1)) if found else -1
        size = len(text.encode())
        ratio = self.workload.ratios[n] if n >= 0 else 1.0
        output = self.rng.randint(1, int(body.get("max_tokens") or 1))
        self.bytes[n].append(size)
        self.output[n].append(output)
        usage = {"input_tokens": math.ceil(ratio * size), "output_tokens": output}
        reads = sum(
            1
            for m in body["messages"]
            if m["role"] == "assistant"
            and any(b.get("type") == "tool_use" for b in m.get("content") or [])
        )
        if n >= 0 and reads >= self.workload.reads[n]:
            return Reply.tool(
                "submit_deliverable",
                {"content": "done", "summary": "done"},
                usage=usage,
                delay=self.latency_s,
            )
        return Reply.tool("read_thread", {}, usage=usage, delay=self.latency_s)


@dataclass
class Outcome:
    order_ratio_max: float
    order_ratio_worst: str
    orders_over: int
    team_ratio: dict[str, float]
    left_reserved: int
    overruns: int
    calls: int
    states: Counter[str]
    exceptions: Counter[str]


async def run_ours(
    args: argparse.Namespace, workload: Workload, workdir: Path
) -> tuple[Outcome, BudgetModel]:
    teams = {
        "default": {"weekly_usd": 100_000.0, "max_concurrent_runs_per_user": 100_000},
        "shared": {"weekly_usd": args.quota, "max_concurrent_runs_per_user": 100_000},
    }
    async with scratch_database(args.url, "bench_budget") as url, fake_servers() as fakes:
        store = Store.from_url(url)
        settings = load_settings(database_url=url, teams=teams)
        try:
            await queue_orders(
                store,
                settings,
                fakes.slack,
                args.runs,
                team=lambda n: workload.teams[n],
                budget=lambda n: Budget(
                    max_usd=workload.ceilings[n],
                    max_tokens=10_000_000,
                    max_wall_clock_s=3600,
                    max_tool_calls=100,
                ),
                requesters=50,
            )
            model = BudgetModel(workload, args.latency)
            fakes.anthropic.script(*[model.reply] * (args.runs * 12))
            env = bench_env(
                url, fakes, workdir, teams=teams, max_quota_wait_s=5, max_output_tokens=1024
            )
            processes = [
                await spawn_worker(env, workdir, worker_id=f"b{i}", concurrency=args.concurrency)
                for i in range(args.workers)
            ]
            try:
                drained = await wait_settled(
                    store, args.runs, deadline_s=args.deadline, say=lambda s: print(s, flush=True)
                )
                print(f"  drained: {drained}; load average {load_average()}", flush=True)
            finally:
                await asyncio.gather(*(stop_worker(p, timeout_s=60) for p in processes))
                for p in processes:
                    await kill_worker(p)
            async with store.transaction() as s:
                rows = list((await s.exec(select(WorkOrderRow))).all())
                calls = list((await s.exec(select(LlmCall))).all())
                spends = list((await s.exec(select(TeamSpend))).all())
        finally:
            await store.close()
    index = {row.id: _number(row.title) for row in rows}
    ratios = [
        (row.spent_micro_usd / usd_to_micro(workload.ceilings[index[row.id]]), row) for row in rows
    ]
    worst_ratio, worst = max(ratios, key=lambda r: r[0])
    team_ratio = {
        t.team: t.spent_micro_usd / usd_to_micro(teams[t.team]["weekly_usd"]) for t in spends
    }
    states: Counter[str] = Counter(row.status for row in rows)
    exceptions: Counter[str] = Counter(
        (row.exception_message or "?")[:70] for row in rows if row.status == "exception"
    )
    outcome = Outcome(
        order_ratio_max=worst_ratio,
        order_ratio_worst=f"WO-{worst.id} spent {worst.spent_micro_usd} of "
        f"{usd_to_micro(workload.ceilings[index[worst.id]])} µ$",
        orders_over=sum(r > 1.0 for r, _ in ratios),
        team_ratio=team_ratio,
        left_reserved=sum(r.reserved_micro_usd for r in rows)
        + sum(t.reserved_micro_usd for t in spends),
        overruns=sum(c.cost_micro_usd > c.reserved_micro_usd for c in calls),
        calls=len(calls),
        states=states,
        exceptions=exceptions,
    )
    return outcome, model


def _number(title: str) -> int:
    found = ORDER_RE.search(title)
    return int(found.group(1)) if found else 0


async def run_naive(
    args: argparse.Namespace, workload: Workload, model: BudgetModel
) -> tuple[float, int, dict[str, float]]:
    """The same workload through a check-after-spend limiter (simulated; see the module doc)."""
    settings = load_settings(database_url="sqlite+aiosqlite:///:memory:")
    price = settings.price(MODEL)
    quota = {"default": usd_to_micro(100_000.0), "shared": usd_to_micro(args.quota)}
    team_spent: Counter[str] = Counter()
    spent = [0] * workload.runs
    rng = random.Random(workload.seed + 2)
    gate = asyncio.Semaphore(args.workers * args.concurrency)
    # The k-th call's request size: as the fake saw it for this order, or extrapolated.
    growth = [b[1] - b[0] for b in model.bytes.values() if len(b) > 1]
    step = sorted(growth)[len(growth) // 2] if growth else 400
    first = sorted(b[0] for b in model.bytes.values() if b)
    base = first[len(first) // 2] if first else 4000

    def size(n: int, k: int) -> int:
        seen = model.bytes.get(n, [])
        if k < len(seen):
            return seen[k]
        return (seen[-1] if seen else base) + step * (k - len(seen) + 1)

    async def run(n: int) -> None:
        async with gate:
            team = workload.teams[n]
            for k in range(workload.reads[n] + 1):
                if (
                    spent[n] >= usd_to_micro(workload.ceilings[n])
                    or team_spent[team] >= quota[team]
                ):
                    return
                await asyncio.sleep(args.latency)
                usage = Usage(
                    math.ceil(workload.ratios[n] * size(n, k)), rng.randint(1, 1024), 0, 0
                )
                cost = call_cost_micro_usd(price, usage)
                spent[n] += cost
                team_spent[team] += cost

    await asyncio.gather(*(run(n) for n in range(workload.runs)))
    ratios = [spent[n] / usd_to_micro(workload.ceilings[n]) for n in range(workload.runs)]
    return (
        max(ratios),
        sum(r > 1.0 for r in ratios),
        {t: team_spent[t] / quota[t] for t in team_spent},
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_url_argument(parser)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--shared", type=float, default=0.3, help="share of orders on `shared`")
    parser.add_argument("--quota", type=float, default=2.0, help="team shared's weekly USD")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.2, help="fake model latency (s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=900.0)
    parser.add_argument("--logs", type=Path, default=None)
    args = parser.parse_args()
    workload = Workload(args.seed, args.runs, args.shared)
    print(
        f"budgets: {args.runs} runs ({workload.teams.count('shared')} on team shared, quota "
        f"${args.quota:g}), {args.workers} workers x {args.concurrency}, model latency "
        f"{args.latency:g} s, seed {args.seed}, week {quota_week(utcnow())}; {machine()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="budgets-") as tmp:
        workdir = args.logs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        ours, model = await run_ours(args, workload, workdir)
    print(
        f"Delegate: max(spent / ceiling) over orders {ours.order_ratio_max:.4f} "
        f"({ours.order_ratio_worst}); orders over their ceiling: {ours.orders_over}"
    )
    print(
        "Delegate: team spent / quota: "
        + ", ".join(f"{t} {r:.4f}" for t, r in sorted(ours.team_ratio.items()))
        + f"; still reserved after the drain: {ours.left_reserved} µ$"
    )
    print(
        f"Delegate: {ours.calls} model calls, {ours.overruns} cost more than their reservation; "
        f"states: {dict(ours.states)}"
    )
    print(
        "Delegate: exceptions: "
        + "; ".join(f"{v} x {k!r}" for k, v in ours.exceptions.most_common(6))
    )
    naive_max, naive_over, naive_teams = await run_naive(args, workload, model)
    print(
        f"naive check-after-spend: max(spent / ceiling) over orders {naive_max:.4f}; orders over "
        f"their ceiling: {naive_over}; team spent / quota: "
        + ", ".join(f"{t} {r:.4f}" for t, r in sorted(naive_teams.items()))
    )
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    asyncio.run(main())
