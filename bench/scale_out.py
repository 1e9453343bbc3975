"""Scale-out on PostgreSQL: 1, 2 and 4 `delegate worker` processes draining the same queue.

    python -m bench.scale_out [--url postgresql+asyncpg://postgres@127.0.0.1:5432/test]
                              [--orders 2000] [--workers 1,2,4] [--concurrency 16]
                              [--latency 1.0]

For each worker count: a fresh scratch PostgreSQL database, the fake Slack/Anthropic/OpenAI
servers on 127.0.0.1 (in this process), `--orders` confirmed orders queued, then that many
`delegate worker --concurrency C` processes (tests/support/processes.py) pointed at them. The
fake model answers every call after `--latency` seconds (a run is two calls: read the thread,
submit), so the work is I/O-bound. The drain time is from the first attempt's start to the last
attempt's end (database clock), so process start-up is left out; wall time from spawn is printed
too. Then, from the database: orders run more than once (more than one attempt, or attempts
that overlapped, or more than one deliverable) and orders lost (not at rest when the drain
ended). Prints orders/s per worker count and the scaling factor against one worker.
Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import func, select

from bench._setup import (
    SETTLED,
    ScriptedModel,
    add_url_argument,
    attempts,
    bench_env,
    cpu_seconds,
    extra_deliverables,
    fake_servers,
    load_average,
    machine,
    queue_orders,
    scratch_database,
    statuses,
    wait_settled,
)
from tests.support.processes import kill_worker, spawn_worker, stop_worker
from workers.config import load_settings
from workers.models import RunAttempt
from workers.store import Store

TEAMS = {"default": {"weekly_usd": 1_000_000.0, "max_concurrent_runs_per_user": 100_000}}


@dataclass
class Drain:
    workers: int
    orders: int
    drain_s: float | None
    wall_s: float | None
    rerun: int
    overlapping: int
    extra_deliverables: int
    lost: int
    outcomes: str
    per_worker: str
    load: str
    run_s: float
    model_calls: int
    worker_cpu_s: float
    fakes_cpu_s: float

    @property
    def rate(self) -> float | None:
        return self.orders / self.drain_s if self.drain_s else None


async def drain(args: argparse.Namespace, workers: int, workdir: Path) -> Drain:
    async with (
        scratch_database(args.url, "bench_scale") as url,
        fake_servers() as fakes,
    ):
        store = Store.from_url(url)
        settings = load_settings(database_url=url, teams=TEAMS)
        try:
            await queue_orders(store, settings, fakes.slack, args.orders)
            model = ScriptedModel(delay=args.latency)
            model.script(fakes.anthropic, args.orders * 3)
            env = bench_env(url, fakes, workdir, teams=TEAMS)
            own_cpu = time.process_time()
            processes = [
                await spawn_worker(
                    env, workdir, worker_id=f"w{workers}.{i}", concurrency=args.concurrency
                )
                for i in range(workers)
            ]
            try:
                wall = await wait_settled(
                    store,
                    args.orders,
                    deadline_s=args.deadline,
                    say=lambda line: print(line, flush=True),
                )
                load = load_average()
                worker_cpu = sum(cpu_seconds(p.pid) for p in processes)
                own_cpu = time.process_time() - own_cpu
            finally:
                await asyncio.gather(*(stop_worker(p, timeout_s=60) for p in processes))
                for p in processes:
                    await kill_worker(p)
            async with store.transaction() as s:
                durations = (
                    await s.exec(
                        select(
                            func.avg(
                                func.extract("epoch", RunAttempt.ended_at - RunAttempt.started_at)
                            )
                        )
                    )
                ).one()
                first, last = (
                    await s.exec(
                        select(func.min(RunAttempt.started_at), func.max(RunAttempt.ended_at))
                    )
                ).one()
            found = await attempts(store)
            counts = await statuses(store)
            extra = await extra_deliverables(store)
            return Drain(
                workers=workers,
                orders=args.orders,
                drain_s=(last - first).total_seconds() if first and last and wall else None,
                wall_s=wall,
                rerun=len(found.rerun),
                overlapping=len(found.overlapping),
                extra_deliverables=len(extra),
                lost=args.orders - sum(counts[s] for s in SETTLED),
                outcomes=", ".join(f"{k} {v}" for k, v in sorted(found.outcomes.items())),
                per_worker=", ".join(str(v) for _, v in sorted(found.by_worker.items())),
                load=load,
                run_s=float(durations or 0),
                model_calls=len(fakes.anthropic.requests),
                worker_cpu_s=worker_cpu,
                fakes_cpu_s=own_cpu,
            )
        finally:
            await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_url_argument(parser)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--workers", default="1,2,4", help="worker counts to run, in order")
    parser.add_argument("--concurrency", type=int, default=16, help="runs at once per worker")
    parser.add_argument("--latency", type=float, default=1.0, help="fake model latency (s)")
    parser.add_argument("--deadline", type=float, default=900.0, help="give up after (s)")
    parser.add_argument("--logs", type=Path, default=None, help="keep worker logs here")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    print(
        f"scale-out: {args.orders} orders, workers {counts} x concurrency {args.concurrency}, "
        f"model latency {args.latency:g} s per call (2 calls per run); {machine()}",
        flush=True,
    )
    results: list[Drain] = []
    for n in counts:
        with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
            workdir = args.logs / f"w{n}" if args.logs else Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            result = await drain(args, n, workdir)
        results.append(result)
        rate = f"{result.rate:.1f} orders/s" if result.rate else "did not finish"
        print(
            f"{n} worker(s): {rate} (drain {result.drain_s or 0:.1f} s, wall from spawn "
            f"{result.wall_s or 0:.1f} s; load at the end {result.load}); run twice: "
            f"{result.rerun} with >1 attempt, {result.overlapping} overlapping, "
            f"{result.extra_deliverables} with >1 deliverable; lost: {result.lost}; "
            f"attempt outcomes: {result.outcomes}; attempts per worker: {result.per_worker}; "
            f"mean attempt {result.run_s:.2f} s, model calls {result.model_calls}; CPU per "
            f"order: workers {1000 * result.worker_cpu_s / result.orders:.0f} ms, fake servers "
            f"and this script {1000 * result.fakes_cpu_s / result.orders:.0f} ms",
            flush=True,
        )
    base = results[0].rate if results else None
    for r in results:
        if base and r.rate:
            print(f"scaling {r.workers} vs {results[0].workers}: {r.rate / base:.2f}x")
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    asyncio.run(main())
