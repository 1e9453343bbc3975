"""Shared setup of the engine benchmarks (runs_in_flight, scale_out, budgets, slack_limits,
bot_overhead): a scratch PostgreSQL database, the fake servers of tests/fakes, queued orders, a
scripted model with a fixed latency, and the figures read back from the database afterwards.

Nothing here asserts; the scripts print what they measure.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlmodel import col, func, select

from tests.fakes.anthropic import FakeAnthropic, Reply
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack
from tests.support.databases import Database
from tests.support.factories import make_order
from tests.support.processes import worker_env
from workers import queue
from workers.config import Settings
from workers.db import create_engine
from workers.migrate import upgrade
from workers.models import Deliverable, RunAttempt, WorkOrderRow
from workers.store import Store
from workers.workorder import Budget, Status

PG_URL = os.environ.get("DELEGATE_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
MODEL = "claude-sonnet-4-6"
SETTLED = frozenset(
    {
        Status.AWAITING_REVIEW.value,
        Status.EXCEPTION.value,
        Status.WAITING_FOR_REQUESTER.value,
        Status.CANCELLED.value,
    }
)
"""Where an order rests once its run is over (until a person acts)."""


def add_url_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=PG_URL, help="PostgreSQL URL; a scratch database is created next to it"
    )


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine() -> str:
    return f"{os.cpu_count()} CPUs, load average {load_average()}"


def percentile(values: Iterable[float], q: float) -> float | None:
    data = sorted(values)
    if not data:
        return None
    if len(data) == 1:
        return data[0]
    return statistics.quantiles(data, n=1000, method="inclusive")[round(q * 1000) - 1]


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.1f} ms"


@asynccontextmanager
async def scratch_database(url: str, prefix: str) -> AsyncIterator[str]:
    """A migrated PostgreSQL database next to `url`, dropped afterwards; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    scratch = make_url(url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(scratch)
    await upgrade(engine)
    await engine.dispose()
    try:
        yield scratch
    finally:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.dispose()


@dataclass
class Fakes:
    slack: FakeSlack
    anthropic: FakeAnthropic
    openai: FakeOpenAI

    def problems(self) -> list[str]:
        return [
            f"{type(f).__name__}: {p}"
            for f in (self.slack, self.anthropic, self.openai)
            for p in f.problems
        ]


@asynccontextmanager
async def fake_servers(slack: FakeSlack | None = None) -> AsyncIterator[Fakes]:
    """The fake Slack, Anthropic and OpenAI servers on 127.0.0.1 (real aiohttp servers)."""
    fakes = Fakes(slack or FakeSlack(), FakeAnthropic(), FakeOpenAI())
    for fake in (fakes.slack, fakes.anthropic, fakes.openai):
        await fake.start()
    try:
        yield fakes
    finally:
        for fake in (fakes.slack, fakes.anthropic, fakes.openai):
            await fake.close()


def read_then_submit(body: dict[str, Any], *, usage: dict[str, int], delay: float) -> Reply:
    """A run's next model answer: read the thread first, then submit the deliverable."""
    last = body["messages"][-1]["content"]
    answered = isinstance(last, list) and any(b.get("type") == "tool_result" for b in last)
    if not answered:
        return Reply.tool("read_thread", {}, usage=usage, delay=delay)
    return Reply.tool(
        "submit_deliverable", {"content": "done", "summary": "done"}, usage=usage, delay=delay
    )


@dataclass
class ScriptedModel:
    """A model that reads the thread, then submits its deliverable; each answer after `delay`
    seconds (a number, or a function of the request body). `usage` (optional) sets the tokens
    each answer reports. Records how long the fake held each answer (`held_s`)."""

    delay: float | Callable[[dict[str, Any]], float] = 0.0
    usage: Callable[[dict[str, Any]], dict[str, int]] | None = None
    calls: int = 0
    held_s: list[float] = field(default_factory=list)

    def reply(self, body: dict[str, Any]) -> Reply:
        self.calls += 1
        delay = self.delay(body) if callable(self.delay) else self.delay
        self.held_s.append(delay)
        usage = self.usage(body) if self.usage is not None else {}
        return read_then_submit(body, usage=usage, delay=delay)

    def script(self, fake: FakeAnthropic, calls: int) -> None:
        fake.script(*[self.reply] * calls)


_thread_serial = itertools.count(1)


async def queue_orders(
    store: Store,
    settings: Settings,
    slack: FakeSlack,
    count: int,
    *,
    channel: str | Callable[[int], str] = "C1",
    team: Callable[[int], str] = lambda _: "default",
    budget: Callable[[int], Budget] | None = None,
    requesters: int = 7,
    concurrency: int = 16,
) -> list[int]:
    """Create `count` confirmed orders, each with its thread in the fake Slack, and queue them;
    returns their numbers (in queue order)."""
    numbers: list[int | None] = [None] * count
    gate = asyncio.Semaphore(concurrency)

    async def one(n: int) -> None:
        async with gate:
            user = f"U{n % requesters}"
            where = channel(n) if callable(channel) else channel
            thread_ts = f"1600000000.{next(_thread_serial):06d}"
            slack.add_message(where, f"please do task {n}", user=user, ts=thread_ts)
            extra: dict[str, Any] = {"team": team(n)}
            if budget is not None:
                extra["budget"] = budget(n)
            created = await store.orders.create_order(
                make_order(
                    title=f"Bench order {n}",
                    requester=user,
                    channel=where,
                    thread_ts=thread_ts,
                    status=Status.AWAITING_CONFIRMATION,
                    **extra,
                ),
                actor=user,
            )
            await queue.enqueue(store, settings, created.id or "", actor=user)
            numbers[n] = int((created.id or "")[3:])

    await asyncio.gather(*(one(n) for n in range(count)))
    return [n for n in numbers if n is not None]


async def statuses(store: Store) -> Counter[str]:
    async with store.transaction() as s:
        rows = (
            await s.exec(
                select(WorkOrderRow.status, func.count()).group_by(col(WorkOrderRow.status))
            )
        ).all()
    return Counter({status: count for status, count in rows})


async def wait_settled(
    store: Store,
    total: int,
    *,
    deadline_s: float,
    say: Callable[[str], None] = lambda _: None,
    every_s: float = 15.0,
    interval_s: float = 0.25,
) -> float | None:
    """Wait until every order rests (see SETTLED); returns the seconds it took, or None."""
    started = time.monotonic()
    last_note = started
    while time.monotonic() - started < deadline_s:
        counts = await statuses(store)
        if sum(counts[s] for s in SETTLED) >= total:
            return time.monotonic() - started
        if time.monotonic() - last_note > every_s:
            last_note = time.monotonic()
            say(f"  {last_note - started:.0f} s: {dict(sorted(counts.items()))}")
        await asyncio.sleep(interval_s)
    return None


@dataclass
class Attempts:
    """What run_attempts says: orders started more than once, how attempts ended."""

    orders_run: int
    attempts: int
    rerun: list[tuple[int, int]]
    """(order, attempts) for orders with more than one attempt."""
    outcomes: Counter[str]
    overlapping: list[int]
    """Orders two of whose attempts were open at the same time (two runners at once)."""
    by_worker: Counter[str]


async def attempts(store: Store) -> Attempts:
    async with store.transaction() as s:
        rows = (
            await s.exec(
                select(
                    RunAttempt.order_id,
                    RunAttempt.number,
                    RunAttempt.worker_id,
                    RunAttempt.started_at,
                    RunAttempt.ended_at,
                    RunAttempt.outcome,
                )
            )
        ).all()
    per_order: dict[int, list[Any]] = {}
    for row in rows:
        per_order.setdefault(row[0], []).append(row)
    overlapping = []
    for order, runs in per_order.items():
        runs.sort(key=lambda r: r[3])
        for a, b in itertools.pairwise(runs):
            if a[4] is None or a[4] > b[3]:
                overlapping.append(order)
                break
    return Attempts(
        orders_run=len(per_order),
        attempts=len(rows),
        rerun=sorted((o, len(r)) for o, r in per_order.items() if len(r) > 1),
        outcomes=Counter(str(r[5]) for r in rows),
        overlapping=sorted(overlapping),
        by_worker=Counter(r[2] for r in rows),
    )


async def extra_deliverables(store: Store) -> list[tuple[int, int]]:
    """(order, deliverables) for orders that submitted more than one deliverable."""
    async with store.transaction() as s:
        rows = (
            await s.exec(
                select(Deliverable.order_id, func.count())
                .group_by(col(Deliverable.order_id))
                .having(func.count() > 1)
            )
        ).all()
    return [(order, count) for order, count in rows]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far (from /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """The peak resident set size of a live process (VmHWM), in MB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


BENCH_ENGINE: dict[str, Any] = {
    "lease_ttl_s": 30,
    "heartbeat_s": 10,
    "cancel_poll_s": 2,
    "poll_interval_s": 0.2,
    "status_update_interval_s": 5,
}
"""The engine the bench's worker processes run with (each script overrides what it measures)."""


def bench_env(
    url: str,
    fakes: Fakes,
    workdir: Path,
    *,
    slack: FakeSlack | None = None,
    teams: dict[str, Any] | None = None,
    **engine: Any,
) -> dict[str, str]:
    """The environment of a `delegate worker`/`run` process on the scratch PostgreSQL `url`,
    talking to the fakes (`slack` when the script serves its own Slack fake)."""
    return worker_env(
        Database("postgres", url),
        fakes.anthropic,
        fakes.openai,
        workdir,
        engine={**BENCH_ENGINE, **engine},
        slack_api_url=(slack or fakes.slack).api_url,
        extra_config={"teams": teams} if teams is not None else None,
    )
