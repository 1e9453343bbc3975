"""Runs in flight: many runs in one worker process, each waiting on a slow model.

    python -m bench.runs_in_flight [--url postgresql+asyncpg://postgres@127.0.0.1:5432/test]
                                   [--runs 1000] [--latency 2.0] [--lease-ttl 60]
                                   [--heartbeat 15] [--cancel-poll 1.0]

A scratch PostgreSQL database gets `--runs` queued orders; the fake Slack, Anthropic and OpenAI
servers run in this process on 127.0.0.1. One worker process (this script again, in `--child`
mode: what `delegate worker --concurrency N` runs, `bot.runner.run_workers_only`, with
instruments added) runs them all at once (concurrency = --runs). The fake model answers every
call after `--latency` seconds; a run is two calls (read the thread, submit).

Measured inside the worker process: event-loop lag (a task asking to sleep 50 ms, and how late
it wakes; p50/p99/max), heartbeat lateness (for each lease renewal, when the database confirmed
it minus when it was due: the previous renewal's send time, or the run's start, plus
`heartbeat_s`; and the smallest margin left before the lease would have expired), the peak
number of runs in flight, and leases lost (runs the lease watcher stopped with `lease_lost`).
From outside: peak RSS (VmHWM) of the worker process, throughput (orders per second from the
first claim to the last order at rest), and, from the database, orders with more than one
attempt and attempts reaped as `lost`. Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench._setup import (
    ScriptedModel,
    add_url_argument,
    attempts,
    bench_env,
    cpu_seconds,
    fake_servers,
    load_average,
    machine,
    ms,
    peak_rss_mb,
    percentile,
    queue_orders,
    scratch_database,
    wait_settled,
)

TEAMS = {"default": {"weekly_usd": 1_000_000.0, "max_concurrent_runs_per_user": 100_000}}
LAG_TICK_S = 0.05


# ------------------------------------------------------------------ the worker process


async def _child(out: Path, concurrency: int) -> None:
    from bot.runner import run_workers_only
    from workers import agent, logs, runtime
    from workers.config import load_settings
    from workers.store.queue import QueueStore

    settings = load_settings()
    logs.configure(level="WARNING", format="text", secrets=settings.secret_values())
    heartbeat_s = settings.engine.heartbeat_s
    ttl_s = settings.engine.lease_ttl_s
    lags: list[float] = []
    lateness: list[float] = []
    margins: list[float] = []
    reference: dict[int, float] = {}
    stops: Counter[str] = Counter()
    peak = {"in_flight": 0, "first_claim": 0.0}

    original_check = QueueStore.check_leases
    original_start = runtime.Worker._start
    original_finished = runtime.Worker._finished
    original_stop = agent.RunControl.stop

    async def check(self: Any, numbers: Any, worker_id: str, **kwargs: Any) -> Any:
        sent = time.monotonic()
        held, cancelled = await original_check(self, numbers, worker_id, **kwargs)
        done = time.monotonic()
        if kwargs.get("renew_ttl_s") is not None:  # a heartbeat: one renewal per run
            for number in numbers:
                if (since := reference.get(number)) is not None:
                    lateness.append(done - (since + heartbeat_s))
                    margins.append(ttl_s - (done - since))
                if number in held:
                    reference[number] = sent
        return held, cancelled

    def start(self: Any, claim: Any) -> None:
        original_start(self, claim)
        reference[int(str(claim.order.id)[3:])] = time.monotonic()
        peak["first_claim"] = peak["first_claim"] or time.time()
        peak["in_flight"] = max(peak["in_flight"], len(self.running))

    def finished(self: Any, number: int, task: Any) -> None:
        reference.pop(number, None)
        original_finished(self, number, task)

    def stop(self: Any, reason: str) -> None:
        stops[reason] += 1
        original_stop(self, reason)

    QueueStore.check_leases = check  # type: ignore[method-assign]
    runtime.Worker._start = start  # type: ignore[method-assign]
    runtime.Worker._finished = finished  # type: ignore[method-assign]
    agent.RunControl.stop = stop  # type: ignore[method-assign]

    async def sample_lag() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_TICK_S)
            lags.append(time.monotonic() - before - LAG_TICK_S)

    sampler = asyncio.create_task(sample_lag())
    try:
        await run_workers_only(settings, concurrency=concurrency, worker_id="bench-inflight")
    finally:
        sampler.cancel()
        _write(
            out,
            json.dumps(
                {
                    "lags": lags,
                    "lateness": lateness,
                    "margins": margins,
                    "stops": stops,
                    "peak_in_flight": peak["in_flight"],
                    "first_claim": peak["first_claim"],
                    "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                }
            ),
        )


def _write(path: Path, text: str) -> None:
    path.write_text(text)


# ------------------------------------------------------------------ the driver


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_url_argument(parser)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=2.0, help="fake model latency (s)")
    parser.add_argument("--lease-ttl", type=int, default=60, help="engine.lease_ttl_s")
    parser.add_argument("--heartbeat", type=int, default=15, help="engine.heartbeat_s")
    parser.add_argument("--cancel-poll", type=float, default=1.0, help="engine.cancel_poll_s")
    parser.add_argument("--deadline", type=float, default=600.0, help="give up after (s)")
    parser.add_argument("--logs", type=Path, default=None, help="keep the worker log here")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        await _child(args.child, args.runs)
        return

    from tests.support.processes import REPO, kill_worker, stop_worker
    from workers.config import load_settings
    from workers.store import Store

    print(
        f"runs in flight: {args.runs} runs in one worker process, model latency "
        f"{args.latency:g} s per call (2 calls per run), lease {args.lease_ttl} s, heartbeat "
        f"{args.heartbeat} s, cancel poll {args.cancel_poll:g} s; {machine()}",
        flush=True,
    )
    async with (
        scratch_database(args.url, "bench_inflight") as url,
        fake_servers() as fakes,
    ):
        store = Store.from_url(url)
        settings = load_settings(database_url=url, teams=TEAMS)
        workdir = Path(tempfile.mkdtemp(prefix="inflight-")) if args.logs is None else args.logs
        workdir.mkdir(parents=True, exist_ok=True)
        out = workdir / "figures.json"
        try:
            await queue_orders(store, settings, fakes.slack, args.runs)
            model = ScriptedModel(delay=args.latency)
            model.script(fakes.anthropic, args.runs * 3)
            env = bench_env(
                url,
                fakes,
                workdir,
                teams=TEAMS,
                lease_ttl_s=args.lease_ttl,
                heartbeat_s=args.heartbeat,
                cancel_poll_s=args.cancel_poll,
                shutdown_grace_s=20,
            )
            log = (workdir / "worker.log").open("wb")
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.runs_in_flight",
                "--runs",
                str(args.runs),
                "--child",
                str(out),
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
            rss_peak = 0.0
            try:

                async def watch_rss() -> None:
                    nonlocal rss_peak
                    while process.returncode is None:
                        rss_peak = max(rss_peak, peak_rss_mb(process.pid))
                        await asyncio.sleep(1)

                rss_task = asyncio.create_task(watch_rss())
                drained = await wait_settled(
                    store,
                    args.runs,
                    deadline_s=args.deadline,
                    say=lambda line: print(line, flush=True),
                )
                ended = time.time()
                load = load_average()
                worker_cpu = cpu_seconds(process.pid)
                rss_peak = max(rss_peak, peak_rss_mb(process.pid))
                rss_task.cancel()
            finally:
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                try:
                    await stop_worker(process, timeout_s=60)
                finally:
                    await kill_worker(process)
            figures = json.loads(out.read_text()) if out.exists() else {}
            found = await attempts(store)
        finally:
            await store.close()
    first_claim = figures.get("first_claim") or 0.0
    throughput = args.runs / (ended - first_claim) if drained and first_claim else None
    lags, late, margins = figures.get("lags", []), figures.get("lateness", []), figures["margins"]
    print(
        f"drained: {'yes' if drained else 'NO'} in {drained or 0:.1f} s from spawn; throughput "
        f"{throughput or 0:.1f} orders/s from the first claim; peak in flight "
        f"{figures.get('peak_in_flight')}"
    )
    print(
        f"peak RSS of the worker: {rss_peak:.0f} MB (getrusage {figures.get('maxrss_mb', 0):.0f} MB)"
    )
    print(
        f"event-loop lag ({len(lags)} samples of a {LAG_TICK_S * 1000:.0f} ms sleep): p50 "
        f"{ms(percentile(lags, 0.5))}, p99 {ms(percentile(lags, 0.99))}, max "
        f"{ms(max(lags, default=None))}"
    )
    print(
        f"heartbeat lateness ({len(late)} renewals): p50 {ms(percentile(late, 0.5))}, p99 "
        f"{ms(percentile(late, 0.99))}, max {ms(max(late, default=None))}; smallest margin "
        f"before expiry {ms(min(margins, default=None))}"
    )
    print(
        f"leases lost: {figures.get('stops', {}).get('lease_lost', 0)} (run stops: "
        f"{figures.get('stops')}); orders with >1 attempt: {len(found.rerun)}; attempt "
        f"outcomes: {dict(found.outcomes)}"
    )
    print(f"worker CPU: {worker_cpu:.1f} s ({1000 * worker_cpu / args.runs:.0f} ms per run)")
    print(f"fake server problems: {fakes.problems()[:3]}")
    print(f"load average at the end of the drain: {load}; now {load_average()}")


if __name__ == "__main__":
    asyncio.run(main())
