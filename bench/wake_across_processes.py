"""Queued in one process, started in another: how soon a separate `delegate worker` posts the
order's first status.

    python -m bench.wake_across_processes [--url postgresql+asyncpg://postgres@127.0.0.1:5432/test]
                                          [--orders 30] [--latency 0.5] [--poll-interval 1.0] [--gap 3]
                                          [--polling-only]

A scratch PostgreSQL database, the fake Slack/Anthropic/OpenAI servers on 127.0.0.1 (in this
process) and one `delegate worker` process (engine defaults: claim poll `--poll-interval` s,
1 s by default). This script plays the bot that queues: for each order it creates a confirmed
order in a channel of its own and queues it (workers.queue.enqueue, as a Start click does), one
at a time, `--gap` s plus a random fraction of the poll interval apart (the previous run has
ended and its messages are out). Measured: from just before the queueing transaction starts until
the fake Slack receives the worker's first chat.postMessage of the order's status message
(`WO-n:status`), minus the fake model's answers by then (`--latency` s each). The worker is
woken by PostgreSQL NOTIFY (migration 0021); `--polling-only` drops that trigger from the
scratch database first, so the worker finds each order by polling, as every worker in another
process did before. p50/p99/max. Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._setup import (
    add_url_argument,
    bench_env,
    fake_servers,
    load_average,
    machine,
    ms,
    percentile,
    scratch_database,
)
from bench.bot_overhead import TimedModel, TimedSlack, _first_call
from tests.support.factories import make_order
from tests.support.processes import kill_worker, spawn_worker, stop_worker
from workers import queue
from workers.config import load_settings
from workers.store import Store
from workers.workorder import Status

TEAMS = {"default": {"weekly_usd": 1_000_000.0, "max_concurrent_runs_per_user": 100}}


def _status_post(key: str) -> Any:
    def match(call: Any) -> bool:
        payload = (call.args.get("metadata") or {}).get("event_payload") or {}
        return bool(call.method == "chat.postMessage" and payload.get("key") == key)

    return match


async def measure(args: argparse.Namespace, workdir: Path) -> tuple[list[float], int, str]:
    slack = TimedSlack()
    model = TimedModel(args.latency)
    async with scratch_database(args.url, "bench_wake") as url, fake_servers(slack) as fakes:
        store = Store.from_url(url)
        settings = load_settings(database_url=url, teams=TEAMS)
        if args.polling_only:
            async with store.engine.begin() as conn:
                await conn.exec_driver_sql(
                    "DROP TRIGGER IF EXISTS work_orders_queued_notify ON work_orders"
                )
        env = bench_env(url, fakes, workdir, teams=TEAMS, poll_interval_s=args.poll_interval)
        process = await spawn_worker(env, workdir, worker_id="apart", concurrency=4)
        waits: list[float] = []
        misses = 0
        try:
            await asyncio.sleep(10.0)  # started, SDKs loaded, listening, past its first pass
            for n in range(args.orders):
                # A channel each: Slack's one message per second per channel (the worker's
                # rate gate) would otherwise hold a status behind the last run's posts.
                channel, thread_ts = f"C{100 + n}", f"1600000000.{n + 1:06d}"
                slack.add_message(channel, f"please do task {n}", user="U1", ts=thread_ts)
                order = await store.orders.create_order(
                    make_order(
                        title=f"Bench order {n}",
                        requester="U1",
                        channel=channel,
                        thread_ts=thread_ts,
                        status=Status.AWAITING_CONFIRMATION,
                    ),
                    actor="U1",
                )
                fakes.anthropic.script(model.run, model.run, model.run)
                since = len(slack.calls)
                sent = time.monotonic()
                await queue.enqueue(store, settings, order.id or "", actor="U1")
                arrived = await _first_call(
                    slack, _status_post(f"{order.id}:status"), since=since
                )
                if arrived is None:
                    misses += 1
                    continue
                waits.append(arrived - sent - model.model_time(f"o{n}", arrived))
                # Let the run end and its messages go out; the random part keeps the queueing
                # from falling on the same phase of the worker's poll every time.
                await asyncio.sleep(args.gap + random.uniform(0, args.poll_interval))
            load = load_average()
        finally:
            await store.close()
            try:
                await stop_worker(process, timeout_s=30)
            finally:
                await kill_worker(process)
    return waits, misses, load


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_url_argument(parser)
    parser.add_argument("--orders", type=int, default=30)
    parser.add_argument("--latency", type=float, default=0.5, help="fake model latency (s)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="engine.poll_interval_s")
    parser.add_argument("--gap", type=float, default=3.0, help="wait between orders (s)")
    parser.add_argument(
        "--polling-only", action="store_true", help="drop the NOTIFY trigger: polling alone"
    )
    args = parser.parse_args()
    how = "polling only" if args.polling_only else "NOTIFY, polling as the fallback"
    print(
        f"queued here, started by a separate delegate worker ({how}): {args.orders} orders, "
        f"claim poll {args.poll_interval:g} s, model latency {args.latency:g} s; {machine()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="wake-") as tmp:
        waits, misses, load = await measure(args, Path(tmp))
    print(
        f"queued -> first status update, minus model time ({len(waits)} samples, {misses} "
        f"missed): p50 {ms(percentile(waits, 0.5))}, p99 {ms(percentile(waits, 0.99))}, "
        f"max {ms(max(waits, default=None))}"
    )
    print(f"load average at the end: {load} (now {load_average()})")


if __name__ == "__main__":
    asyncio.run(main())
