"""Chaos: worker processes killed at random and a flaky Slack, on PostgreSQL.

    python -m bench.chaos [--url postgresql+asyncpg://postgres@127.0.0.1:5432/test]
                          [--orders 200] [--workers 3] [--seed N]

Creates a scratch PostgreSQL database next to the one in --url, starts the fake Slack, Anthropic
and OpenAI servers of tests/fakes on 127.0.0.1 (real HTTP servers; the `delegate worker`
processes reach them through SLACK_API_URL, ANTHROPIC_BASE_URL and OPENAI_BASE_URL), queues
--orders confirmed orders and runs --workers `delegate worker` processes. Slack answers a random
share of calls with a 429 (with Retry-After), a 500/503 or a timeout (held past the client's
15 s; half of those after the call was carried out, so the post exists but its answer is lost).
A chaos loop SIGKILLs a random worker at random moments and starts a fresh one in its place,
until every order rests in a waiting or terminal state (awaiting review, exception) with its
final message - the review prompt, or the exception notice - delivered into its thread.

Then it prints figures; it asserts nothing (tests/test_chaos.py is the smaller, asserting run):

- kills, and recovery time p50/p99: for each order a killed worker held (leased, running) at the
  moment of its SIGKILL, the time from the kill until another worker started a new attempt on it
  (the database's `run_attempts.started_at`), or until the order left the running states
  otherwise (an exception after too many lost leases; then the time it was seen so).
- duplicate posts: Slack messages posted more than once for one idempotency key (read from each
  message's metadata in the fake Slack, which keeps every message it stored, including those
  whose answer was lost), plus orders with more than one review prompt.
- lost finals: orders resting in a waiting state whose final message Slack never received.
- spend: every model response the fakes served carries a unique token count, so each `ok` row of
  the ledger (`llm_calls`) is matched to the one response it paid for. Double-counted = ledger
  rows paying for a response another row already paid for (or for a response never served);
  the sum of `ok` costs is compared with the served responses' price; order and team totals
  with the ledger's sum. Calls cut off by a SIGKILL are charged their reservation (the worst
  case) as `interrupted`: counted apart, never as double-counting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel import col, select

from bench._setup import read_then_submit, scratch_database
from tests.fakes.anthropic import FakeAnthropic, Reply
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack
from tests.support.databases import Database
from tests.support.factories import make_order
from tests.support.processes import kill_worker, spawn_worker, stop_worker, worker_env
from tests.support.waiting import eventually
from workers import queue
from workers.budget import call_cost_micro_usd
from workers.config import load_settings
from workers.models import LlmCall, RunAttempt, TeamSpend, WorkOrderRow
from workers.providers import Usage
from workers.store import Store
from workers.workorder import Status, format_order_id

SETTLED = frozenset({Status.AWAITING_REVIEW, Status.EXCEPTION, Status.WAITING_FOR_REQUESTER})
"""Where an order rests until a person acts: each of these owes its thread a final message."""
HELD = frozenset({Status.RUNNING.value, Status.VERIFYING.value})
TEAMS = {"default": {"weekly_usd": 100_000.0, "max_concurrent_runs_per_user": 1000}}
MODEL = "claude-sonnet-4-6"


@dataclass
class ChaosConfig:
    orders: int = 200
    workers: int = 3
    concurrency: int = 4
    seed: int = 1
    model_latency_s: tuple[float, float] = (0.3, 2.0)
    kill_every_s: tuple[float, float] = (2.0, 8.0)
    """A kill comes after a random pause in this range (seconds)."""
    restart_after_s: tuple[float, float] = (0.0, 2.0)
    max_kills: int | None = None
    slack_fault_rate: float = 0.15
    slack_fault_weights: dict[str, float] = field(
        default_factory=lambda: {"429": 0.45, "5xx": 0.45, "timeout": 0.10}
    )
    slack_hang_s: float = 16.0
    """How long a timed-out Slack call is held (the client gives up after 15 s)."""
    max_slack_timeouts: int | None = None
    lease_ttl_s: float = 10.0
    heartbeat_s: float = 2.0
    max_attempts: int = 3
    deadline_s: float = 900.0
    outage_at_s: float | None = None
    """A sustained Slack outage this long after the start: every call times out with the call
    carried out (the post exists, its answer is lost), then every call is carried out and
    answered 500, each for half of `outage_s`."""
    outage_s: float = 120.0
    storm_at_s: float | None = None
    """A 429 storm: most calls answered 429 (Retry-After 2 s) for `storm_s`."""
    storm_s: float = 30.0
    db_kill_every_s: float | None = None
    """Terminate every database connection of the workers this often (pg_terminate_backend)."""
    skewed_workers: int = 0
    """How many worker slots run with their clock `skew_s` ahead (libfaketime)."""
    skew_s: float = 120.0


@dataclass
class KillSample:
    order: int
    attempts: int
    killed_at: float
    worker: str
    recovered_at: float | None = None


@dataclass
class ChaosReport:
    orders: int = 0
    workers: int = 0
    outages: int = 0
    storms: int = 0
    db_kills: int = 0
    connections_killed: int = 0
    skewed: int = 0
    elapsed_s: float = 0.0
    rested_s: float | None = None
    """When every order had come to rest (its final message may still have been on its way)."""
    kills: int = 0
    states: Counter[str] = field(default_factory=Counter)
    exceptions: Counter[str] = field(default_factory=Counter)
    unsettled: list[str] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)
    unrecovered: int = 0
    posts: int = 0
    duplicate_posts: int = 0
    duplicates: list[str] = field(default_factory=list)
    lost_finals: list[str] = field(default_factory=list)
    undelivered: int = 0
    slack_calls: int = 0
    slack_faults: Counter[str] = field(default_factory=Counter)
    served: int = 0
    served_micro_usd: int = 0
    ledger_ok: int = 0
    ledger_ok_micro_usd: int = 0
    ledger_matched_micro_usd: int = 0
    interrupted: int = 0
    interrupted_micro_usd: int = 0
    double_counted: int = 0
    unknown_ledger_rows: int = 0
    served_not_charged: int = 0
    order_total_mismatches: list[str] = field(default_factory=list)
    team_spent_micro_usd: int = 0
    ledger_micro_usd: int = 0
    reserved_left_micro_usd: int = 0
    extra_deliverables: list[str] = field(default_factory=list)
    exit_codes: list[int | None] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float | None:
        if not self.recovery_s:
            return None
        data = sorted(self.recovery_s)
        if len(data) == 1:
            return data[0]
        return statistics.quantiles(data, n=100, method="inclusive")[round(q * 100) - 1]

    def lines(self) -> list[str]:
        def s(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.1f} s"

        states = ", ".join(f"{k} {v}" for k, v in sorted(self.states.items()))
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.slack_faults.items())) or "none"
        return [
            f"orders: {self.orders} on {self.workers} worker processes: all at rest after "
            f"{s(self.rested_s)}, every final message delivered after {s(self.elapsed_s)} "
            f"({states})",
            f"not settled: {len(self.unsettled)}" + _some(self.unsettled),
            "exceptions: "
            + (", ".join(f"{v} x {k!r}" for k, v in self.exceptions.most_common()) or "none"),
            f"faults on top: {self.outages} Slack outage(s), {self.storms} 429 storm(s), "
            f"{self.db_kills} database drop(s) ({self.connections_killed} connections), "
            f"{self.skewed} worker slot(s) with the clock ahead",
            f"kills: {self.kills} (SIGKILL), orders held at a kill: "
            f"{len(self.recovery_s) + self.unrecovered}",
            f"recovery time: p50 {s(self.percentile(0.5))}, p99 {s(self.percentile(0.99))}, "
            f"max {s(max(self.recovery_s, default=None))} (unrecovered: {self.unrecovered})",
            f"slack: {self.slack_calls} Web API calls, faults served: {faults}",
            f"duplicate posts: {self.duplicate_posts} (of {self.posts} messages posted)"
            + _some(self.duplicates),
            f"lost finals: {len(self.lost_finals)}" + _some(self.lost_finals),
            f"outbox messages never delivered: {self.undelivered}",
            f"model responses served: {self.served} = ${self.served_micro_usd / 1e6:.4f}; "
            f"ledger ok rows: {self.ledger_ok} = ${self.ledger_ok_micro_usd / 1e6:.4f} "
            f"(matched to served: ${self.ledger_matched_micro_usd / 1e6:.4f})",
            f"double-counted spend: {self.double_counted} ledger rows "
            f"(+ {self.unknown_ledger_rows} rows for no served response)",
            f"calls cut off by a kill: {self.interrupted} served-but-unrecorded responses "
            f"{self.served_not_charged}, charged worst case "
            f"${self.interrupted_micro_usd / 1e6:.4f}",
            f"totals: team spent ${self.team_spent_micro_usd / 1e6:.4f}, ledger "
            f"${self.ledger_micro_usd / 1e6:.4f}, still reserved "
            f"${self.reserved_left_micro_usd / 1e6:.4f}, orders whose spend != their ledger: "
            f"{len(self.order_total_mismatches)}" + _some(self.order_total_mismatches),
            f"orders with more than one deliverable: {len(self.extra_deliverables)}"
            + _some(self.extra_deliverables),
            f"worker exit codes at the end (SIGTERM): {self.exit_codes}",
            f"fake server problems: {len(self.problems)}" + _some(self.problems),
        ]


def _some(items: list[str], n: int = 5) -> str:
    if not items:
        return ""
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return " - " + "; ".join(items[:n]) + more


class _Models:
    """Scripted model replies: read the thread, then submit. Each response served carries a
    unique token count, so a ledger row can be matched to the response it paid for."""

    def __init__(self, seed: int, latency_s: tuple[float, float]) -> None:
        self.rng = random.Random(seed)
        self.latency_s = latency_s
        self.serial = itertools.count(1)
        self.served: dict[tuple[int, int], str] = {}  # (input, output) tokens -> model

    def reply(self, body: dict[str, Any]) -> Reply:
        n = next(self.serial)
        # Within what the run reserves (its prompt's estimate, max_output_tokens 1024), unique.
        usage = {"input_tokens": 200 + n // 1000, "output_tokens": 10 + n % 1000}
        self.served[(usage["input_tokens"], usage["output_tokens"])] = str(body.get("model"))
        delay = self.rng.uniform(*self.latency_s)  # a model takes its time: kills land mid-call
        return read_then_submit(body, usage=usage, delay=delay)


def _post_key(message: dict[str, Any]) -> str | None:
    metadata = message.get("metadata") or {}
    key = (metadata.get("event_payload") or {}).get("key")
    return str(key) if key else None


async def run_chaos(
    config: ChaosConfig,
    database: Database,
    workdir: Path,
    *,
    say: Callable[[str], None] = lambda _: None,
) -> ChaosReport:
    """Run the chaos on `database` (migrated, empty); return the figures."""
    rng = random.Random(config.seed)
    report = ChaosReport(orders=config.orders, workers=config.workers)
    store = Store(database.engine())
    settings = load_settings(database_url=database.url, teams=TEAMS)
    models = _Models(config.seed, config.model_latency_s)
    fake_slack, fake_anthropic, fake_openai = FakeSlack(), FakeAnthropic(), FakeOpenAI()
    for fake in (fake_slack, fake_anthropic, fake_openai):
        await fake.start()
    processes: dict[int, tuple[str, asyncio.subprocess.Process]] = {}
    try:
        numbers: list[int] = []
        for n in range(config.orders):
            thread_ts = f"1600000000.{n + 1:06d}"  # never one the fake hands out itself
            fake_slack.add_message("C1", f"please do task {n}", user=f"U{n % 7}", ts=thread_ts)
            created = await store.orders.create_order(
                make_order(
                    title=f"Chaos order {n}",
                    requester=f"U{n % 7}",
                    thread_ts=thread_ts,
                    status=Status.AWAITING_CONFIRMATION,
                ),
                actor=f"U{n % 7}",
            )
            await queue.enqueue(store, settings, created.id or "", actor=f"U{n % 7}")
            numbers.append(int((created.id or "")[3:]))
        fake_anthropic.script(*[models.reply] * (config.orders * 8))
        fake_slack.flaky(
            config.slack_fault_rate,
            seed=config.seed,
            weights=config.slack_fault_weights,
            hang_s=config.slack_hang_s,
            max_timeouts=config.max_slack_timeouts,
        )
        env = worker_env(
            database,
            fake_anthropic,
            fake_openai,
            workdir,
            engine={
                "lease_ttl_s": config.lease_ttl_s,
                "heartbeat_s": config.heartbeat_s,
                "max_attempts": config.max_attempts,
                "poll_interval_s": 0.2,
                "status_update_interval_s": 1,
            },
            slack_api_url=fake_slack.api_url,
            extra_config={"teams": TEAMS},
        )
        generation = itertools.count()

        skewed_env = _skewed(env, config.skew_s) if config.skewed_workers else env

        async def spawn(slot: int) -> None:
            worker_id = f"w{slot}.{next(generation)}"
            skewed = slot < config.skewed_workers
            process = await spawn_worker(
                skewed_env if skewed else env,
                workdir,
                worker_id=worker_id + ("-skewed" if skewed else ""),
                concurrency=config.concurrency,
            )
            processes[slot] = (worker_id + ("-skewed" if skewed else ""), process)

        for slot in range(config.workers):
            await spawn(slot)
        report.skewed = min(config.skewed_workers, config.workers)
        started = time.time()
        samples: list[KillSample] = []

        async def running() -> bool:
            with contextlib.suppress(DBAPIError):  # our own connections are dropped too
                return await _running()
            return False

        async def _running() -> bool:
            async with store.transaction() as s:
                held = (
                    await s.exec(
                        select(WorkOrderRow.id).where(col(WorkOrderRow.status).in_(HELD)).limit(1)
                    )
                ).first()
            return held is not None

        async def chaos() -> None:
            # The workers are up and at work: the chaos begins.
            await eventually(running, timeout_s=config.deadline_s, interval_s=0.1)
            while config.max_kills is None or report.kills < config.max_kills:
                await asyncio.sleep(rng.uniform(*config.kill_every_s))
                slot = rng.randrange(config.workers)
                worker_id, process = processes[slot]
                await kill_worker(process)
                killed_at = time.time()
                report.kills += 1
                held = await _held_by(worker_id)
                samples.extend(KillSample(n or 0, a, killed_at, worker_id) for n, a in held)
                say(f"  kill {report.kills}: {worker_id} held {len(held)} run(s)")
                await asyncio.sleep(rng.uniform(*config.restart_after_s))
                await spawn(slot)

        async def _held_by(worker_id: str) -> list[tuple[int | None, int]]:
            for _ in range(5):
                with contextlib.suppress(DBAPIError):
                    return await _held_by_once(worker_id)
            return []

        async def _held_by_once(worker_id: str) -> list[tuple[int | None, int]]:
            async with store.transaction() as s:
                held = (
                    await s.exec(
                        select(WorkOrderRow.id, WorkOrderRow.attempts).where(
                            col(WorkOrderRow.lease_owner) == worker_id,
                            col(WorkOrderRow.status).in_(HELD),
                        )
                    )
                ).all()
            return list(held)

        async def settled() -> bool:
            try:
                return await _settled()
            except DBAPIError:  # the connection killer dropped ours too: look again
                return False

        async def _settled() -> bool:
            await _recoveries(store, samples)
            async with store.transaction() as s:
                rows = (await s.exec(select(WorkOrderRow.id, WorkOrderRow.status))).all()
            posted = {
                key for m in fake_slack.messages.get("C1", []) if (key := _post_key(m)) is not None
            }
            if report.rested_s is None and all(Status(st) in SETTLED for _, st in rows):
                report.rested_s = time.time() - started
            if not all(
                Status(status) in SETTLED and _final_posted(Status(status), n or 0, posted)
                for n, status in rows
            ):
                return False
            # ...and the engine knows it: no message is still owed (a post whose answer was
            # lost is found again by its key, not posted twice).
            return not [m for m in await store.outbox.undelivered() if not m.permanent]

        async def faults() -> None:
            """The timed faults: a Slack outage, a 429 storm, database connections dropped."""
            timeline: list[tuple[float, Callable[[], Any]]] = []
            normal = dict(
                seed=config.seed,
                weights=config.slack_fault_weights,
                hang_s=config.slack_hang_s,
                max_timeouts=config.max_slack_timeouts,
            )
            if config.outage_at_s is not None:
                half = config.outage_s / 2

                def outage_timeouts() -> None:
                    report.outages += 1
                    say("  Slack outage: timeouts, the calls carried out")
                    fake_slack.flaky(
                        1.0,
                        seed=config.seed,
                        weights={"timeout": 1.0},
                        hang_s=config.slack_hang_s,
                        processed_on_timeout=1.0,
                    )

                def outage_500s() -> None:
                    say("  Slack outage: 500s after the calls were carried out")
                    fake_slack.flaky(1.0, seed=config.seed, weights={"5xx-after-processing": 1.0})

                def outage_over() -> None:
                    say("  Slack outage over")
                    fake_slack.flaky(config.slack_fault_rate, **normal)  # type: ignore[arg-type]

                timeline += [
                    (config.outage_at_s, outage_timeouts),
                    (config.outage_at_s + half, outage_500s),
                    (config.outage_at_s + config.outage_s, outage_over),
                ]
            if config.storm_at_s is not None:

                def storm() -> None:
                    report.storms += 1
                    say("  429 storm")
                    fake_slack.flaky(0.8, seed=config.seed, weights={"429": 1.0}, retry_after=2.0)

                def storm_over() -> None:
                    say("  429 storm over")
                    fake_slack.flaky(config.slack_fault_rate, **normal)  # type: ignore[arg-type]

                timeline += [
                    (config.storm_at_s, storm),
                    (config.storm_at_s + config.storm_s, storm_over),
                ]
            timeline.sort(key=lambda t: t[0])
            db_kills = asyncio.create_task(_kill_connections(config, database, report, say))
            try:
                for at, action in timeline:
                    await asyncio.sleep(max(0.0, started + at - time.time()))
                    action()
                await asyncio.Event().wait()  # keep the connection killer going
            finally:
                db_kills.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await db_kills

        chaos_task = asyncio.create_task(chaos(), name="chaos")
        faults_task = asyncio.create_task(faults(), name="faults")
        try:
            deadline = started + config.deadline_s
            last_note = 0.0
            while not await settled() and time.time() < deadline:
                for task in (chaos_task, faults_task):
                    if task.done():
                        task.result()  # surface a crash of the chaos or the fault loop
                if time.time() - last_note > 30:
                    last_note = time.time()
                    with contextlib.suppress(DBAPIError):
                        say(f"  {time.time() - started:.0f} s: {await _census(store)}")
                await asyncio.sleep(0.25)
            report.elapsed_s = time.time() - started
        finally:
            for task in (chaos_task, faults_task):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # Stop what is left gracefully: nothing is in flight any more, so nothing more is said.
        report.exit_codes = list(
            await asyncio.gather(
                *(stop_worker(p, timeout_s=60) for _, p in processes.values()),
                return_exceptions=False,
            )
        )
        await _recoveries(store, samples)
        report.recovery_s = [
            s.recovered_at - s.killed_at for s in samples if s.recovered_at is not None
        ]
        report.unrecovered = sum(s.recovered_at is None for s in samples)
        await _check(report, store, settings, fake_slack, models, numbers)
        report.problems = [
            f"{type(f).__name__}: {p}"
            for f in (fake_slack, fake_anthropic, fake_openai)
            for p in f.problems
        ]
    finally:
        for _, process in processes.values():
            if process.returncode is None:
                await kill_worker(process)
        for fake in (fake_slack, fake_anthropic, fake_openai):
            await fake.close()
        await store.close()
    return report


def _skewed(env: dict[str, str], skew_s: float) -> dict[str, str]:
    """The environment of a worker whose wall clock runs `skew_s` ahead (libfaketime; the
    monotonic clock asyncio runs on is left alone)."""
    library = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
    if not library.exists():
        raise SystemExit(
            "--skewed-workers needs libfaketime: apt-get install faketime (Debian/Ubuntu)"
        )
    return env | {
        "LD_PRELOAD": str(library),
        "FAKETIME": f"+{skew_s:g}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }


async def _kill_connections(
    config: ChaosConfig, database: Database, report: ChaosReport, say: Callable[[str], None]
) -> None:
    """Every `db_kill_every_s`, terminate the scratch database's other connections: the
    workers' pools lose every connection at once, mid-query for some."""
    if config.db_kill_every_s is None:
        return
    admin = Store.from_url(database.url)
    try:
        while True:
            await asyncio.sleep(config.db_kill_every_s)
            async with admin.transaction() as s:
                killed = (
                    await s.exec(  # type: ignore[call-overload]
                        text(
                            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                            "FROM pg_stat_activity WHERE datname = current_database() "
                            "AND pid <> pg_backend_pid()"
                        )
                    )
                ).one()[0]
            report.db_kills += 1
            report.connections_killed += int(killed or 0)
            say(f"  database: {killed} connection(s) terminated")
    finally:
        await admin.close()


def _final_posted(status: Status, number: int, posted: set[str]) -> bool:
    order = format_order_id(number)
    if status is Status.AWAITING_REVIEW:
        return any(k.startswith(f"{order}:review:") for k in posted)
    if status is Status.EXCEPTION:
        return any(k.startswith(f"{order}:exception") for k in posted)
    if status is Status.WAITING_FOR_REQUESTER:
        return any(k.startswith(f"{order}:question:") for k in posted)
    return False


async def _census(store: Store) -> str:
    async with store.transaction() as s:
        rows = (await s.exec(select(WorkOrderRow.status))).all()
    owed = await store.outbox.undelivered()
    states = ", ".join(f"{k} {v}" for k, v in sorted(Counter(rows).items()))
    return f"{states}; messages owed: {len(owed)}" + _some(
        [f"{m.key} (tries {m.attempts}: {m.error})" for m in owed], 3
    )


async def _recoveries(store: Store, samples: list[KillSample]) -> None:
    """Fill in when each order a killed worker held was taken up again (see the module doc)."""
    open_ = [s for s in samples if s.recovered_at is None]
    if not open_:
        return
    numbers = sorted({s.order for s in open_})
    async with store.transaction() as s:
        attempts = (
            await s.exec(
                select(RunAttempt.order_id, RunAttempt.number, RunAttempt.started_at).where(
                    col(RunAttempt.order_id).in_(numbers)
                )
            )
        ).all()
        rows = dict(
            (
                await s.exec(
                    select(WorkOrderRow.id, WorkOrderRow.status).where(
                        col(WorkOrderRow.id).in_(numbers)
                    )
                )
            ).all()
        )
    now = time.time()
    for sample in open_:
        later = [
            started.timestamp()
            for order, number, started in attempts
            if order == sample.order and number > sample.attempts
        ]
        if later:
            sample.recovered_at = min(later)
        elif rows.get(sample.order) not in (*HELD, Status.QUEUED.value):
            sample.recovered_at = now  # left the running states without a new attempt


async def _check(
    report: ChaosReport,
    store: Store,
    settings: Any,
    fake_slack: FakeSlack,
    models: _Models,
    numbers: list[int],
) -> None:
    # Slack: every message the fake stored, by idempotency key.
    report.slack_calls = len(fake_slack.calls)
    report.slack_faults = Counter(fake_slack.faults)
    messages = [m for ms in fake_slack.messages.values() for m in ms if m.get("bot_id")]
    keys = Counter(k for m in messages if (k := _post_key(m)) is not None)
    report.posts = len(messages)
    for key, count in sorted(keys.items()):
        if count > 1:
            report.duplicate_posts += count - 1
            report.duplicates.append(f"{key} x{count}")
    reviews = Counter(k.split(":review:")[0] for k in keys if ":review:" in k)
    for order, count in sorted(reviews.items()):
        if count > 1:
            report.duplicate_posts += count - 1
            report.duplicates.append(f"{order}: {count} review prompts")
    posted = set(keys)

    async with store.transaction() as s:
        rows = list((await s.exec(select(WorkOrderRow))).all())
        calls = list((await s.exec(select(LlmCall))).all())
        teams = list((await s.exec(select(TeamSpend))).all())
    for row in rows:
        status = Status(row.status)
        report.states[status.value] += 1
        name = format_order_id(row.id or 0)
        if status is Status.EXCEPTION:
            report.exceptions[(row.exception_message or "?")[:80]] += 1
        if status not in SETTLED:
            report.unsettled.append(f"{name} {status.value}")
        elif not _final_posted(status, row.id or 0, posted):
            report.lost_finals.append(f"{name} {status.value}")
        deliverables = await store.runs.deliverables(name)
        if len(deliverables) > 1:
            report.extra_deliverables.append(f"{name} x{len(deliverables)}")
        own = sum(c.cost_micro_usd for c in calls if c.order_id == row.id)
        if own != row.spent_micro_usd:
            report.order_total_mismatches.append(
                f"{name} spent {row.spent_micro_usd} vs ledger {own}"
            )
        report.reserved_left_micro_usd += row.reserved_micro_usd
    report.undelivered = len(await store.outbox.undelivered())

    # Spend: each ok ledger row pays for exactly one response the fake served.
    served = models.served
    report.served = len(served)
    report.served_micro_usd = sum(
        call_cost_micro_usd(settings.price(MODEL), Usage(i, o, 0, 0)) for i, o in served
    )
    paid: Counter[tuple[int, int]] = Counter()
    for call in calls:
        if call.outcome == "ok":
            report.ledger_ok += 1
            report.ledger_ok_micro_usd += call.cost_micro_usd
            signature = (call.input_tokens, call.output_tokens)
            if signature not in served:
                report.unknown_ledger_rows += 1
                continue
            paid[signature] += 1
            if paid[signature] > 1:
                report.double_counted += 1
            else:
                report.ledger_matched_micro_usd += call_cost_micro_usd(
                    settings.price(call.model), Usage(*signature, 0, 0)
                )
        elif call.outcome == "interrupted":
            report.interrupted += 1
            report.interrupted_micro_usd += call.cost_micro_usd
    report.served_not_charged = sum(1 for sig in served if sig not in paid)
    report.ledger_micro_usd = sum(c.cost_micro_usd for c in calls)
    report.team_spent_micro_usd = sum(t.spent_micro_usd for t in teams)
    report.reserved_left_micro_usd += sum(t.reserved_micro_usd for t in teams)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "DELEGATE_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
        ),
        help="PostgreSQL URL; a scratch database is created next to it",
    )
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="runs at once per worker")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fault-rate", type=float, default=0.15, help="Slack calls that fail")
    parser.add_argument("--deadline", type=float, default=900.0, help="give up after (s)")
    parser.add_argument("--logs", type=Path, default=None, help="keep worker logs in this folder")
    parser.add_argument(
        "--outage-at", type=float, default=None, help="a 2-minute Slack outage this many s in"
    )
    parser.add_argument("--outage", type=float, default=120.0, help="the outage's length (s)")
    parser.add_argument("--storm-at", type=float, default=None, help="a 429 storm this many s in")
    parser.add_argument(
        "--db-kill-every", type=float, default=None, help="drop every DB connection this often (s)"
    )
    parser.add_argument(
        "--skewed-workers", type=int, default=0, help="worker slots with a clock 120 s ahead"
    )
    parser.add_argument(
        "--all-faults",
        action="store_true",
        help="outage at 20 s, 429 storm at 170 s, DB connections dropped every 25 s, one "
        "worker 120 s ahead (on top of the kills and the random faults)",
    )
    args = parser.parse_args()
    if args.all_faults:
        args.outage_at = 20.0 if args.outage_at is None else args.outage_at
        args.storm_at = 170.0 if args.storm_at is None else args.storm_at
        args.db_kill_every = args.db_kill_every or 25.0
        args.skewed_workers = args.skewed_workers or 1
    config = ChaosConfig(
        orders=args.orders,
        workers=args.workers,
        concurrency=args.concurrency,
        seed=args.seed,
        slack_fault_rate=args.fault_rate,
        deadline_s=args.deadline,
        outage_at_s=args.outage_at,
        outage_s=args.outage,
        storm_at_s=args.storm_at,
        db_kill_every_s=args.db_kill_every,
        skewed_workers=args.skewed_workers,
    )
    load = os.getloadavg()
    print(
        f"chaos: {config.orders} orders, {config.workers} workers x {config.concurrency}, "
        f"seed {config.seed}, Slack fault rate {config.slack_fault_rate:.0%}, "
        f"lease {config.lease_ttl_s:g} s; {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )
    async with scratch_database(args.url, "bench_chaos") as scratch:
        with tempfile.TemporaryDirectory(prefix="chaos-") as workdir:
            if args.logs is not None:
                args.logs.mkdir(parents=True, exist_ok=True)
            report = await run_chaos(
                config,
                Database("postgres", scratch),
                args.logs or Path(workdir),
                say=lambda line: print(line, flush=True),
            )
    for line in report.lines():
        print(line)
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
