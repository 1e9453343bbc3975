"""How long the leads' metrics take over a year of history.

    python -m bench.metrics_year [--url postgresql+asyncpg://postgres@127.0.0.1:5432/test]
                                 [--orders 100000] [--calls 1000000] [--keep]

Creates a scratch database (a SQLite file, or a fresh PostgreSQL database next to the one in
--url), bulk-inserts a year of orders with their transitions (each as an audit event and as a
`transitions` row, as `Store._move` writes them), model calls and intake dialogues, then prints
how long these take:

- one team's weekly digest figures (the week, the week before, and the 8-week chart series);
- the whole workspace's digest figures for a week;
- every figure for the whole workspace over the whole year (one period);
- the 12-week CSV export for one team, and the 52-week one for the whole workspace;

first from the rows, then again once every closed day has been summarised (as the hourly
`metric-days` sweep does), with how long summarising the year took.

Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

from workers.config import load_settings
from workers.db import create_engine, is_sqlite
from workers.digest import CHART_WEEKS, build_digest
from workers.migrate import upgrade
from workers.store.reporting import Reporting, metrics
from workers.store.reporting.metric_days import summarise_closed_days
from workers.store.reporting.metrics import ALL, Period

TEAMS = ("growth", "ops", "finance", "default")
CLASSES = ("quick", "standard", "standard", "deep")
MODELS = {"quick": "claude-haiku-4-5", "standard": "claude-sonnet-4-6", "deep": "claude-opus-4-6"}
YEAR_START = datetime(2025, 12, 1, tzinfo=UTC)  # a Monday
BATCH = 20_000


async def _scratch_database(url: str | None) -> tuple[str, str | None]:
    if url is None or is_sqlite(url):
        path = Path(tempfile.mkdtemp()) / "bench.db"
        return f"sqlite+aiosqlite:///{path}", None
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    await admin.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False), name


async def _drop(url: str, name: str | None) -> None:
    if name is None:
        return
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.dispose()


def _history(orders: int, calls: int, seed: int = 7) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(seed)
    span_s = 365 * 86400
    rows: dict[str, list[dict[str, Any]]] = {
        "work_orders": [],
        "audit_events": [],
        "transitions": [],
        "llm_calls": [],
        "intake_sessions": [],
    }
    calls_per_order = calls // orders
    extra_calls = calls - calls_per_order * orders
    for n in range(1, orders + 1):
        team = TEAMS[n % len(TEAMS)]
        workload = rng.choice(CLASSES)
        t0 = YEAR_START + timedelta(seconds=rng.randrange(span_s))
        fate = rng.random()
        path: list[tuple[str, float, str, str | None]] = [("queued", 0, f"U{n % 200}", None)]
        clock = rng.expovariate(1 / 900)
        path.append(("running", clock, "w", None))
        if fate < 0.05:
            path.append(("cancelled", clock + 60, f"U{n % 200}", None))
        elif fate < 0.15:
            path.append(("exception", clock + 600, "w", rng.choice(["budget", "crashed", "quota"])))
        else:
            clock += rng.expovariate(1 / 1800)
            path.append(("awaiting_review", clock, "w", None))
            if fate < 0.30:  # changes requested once
                clock += rng.expovariate(1 / 7200)
                path += [
                    ("changes_requested", clock, f"UR{n % 20}", None),
                    ("queued", clock, f"UR{n % 20}", None),
                    ("running", clock + rng.expovariate(1 / 600), "w", None),
                ]
                clock = path[-1][1] + rng.expovariate(1 / 1800)
                path.append(("awaiting_review", clock, "w", None))
            if fate < 0.95:
                clock += rng.expovariate(1 / 7200)
                final = "rejected" if fate > 0.85 else "approved"
                path.append((final, clock, f"UR{n % 20}", None))
        status = path[-1][0]
        rows["work_orders"].append(
            {
                "id": n,
                "title": f"bench {n}",
                "requester": f"U{n % 200}",
                "team": team,
                "goal": "g",
                "context": "",
                "deliverable": "d",
                "acceptance_criteria": ["c"],
                "budget": {},
                "workload_class": workload,
                "authority_policy": "default",
                "verification": {},
                "status": status,
                "version": len(path) + 1,
                "priority": 1,
                "rework_count": 1 if any(p[0] == "changes_requested" for p in path) else 0,
                "auto_revisions": 0,
                "attempts": 1,
                "spent_micro_usd": 0,
                "spent_tokens": 0,
                "reserved_micro_usd": 0,
                "reserved_tokens": 0,
                "tool_calls": 0,
                "model_calls": calls_per_order,
                "lost_leases": 0,
                "elapsed_ms": 0,
                "created_at": t0 - timedelta(minutes=3),
                "updated_at": t0 + timedelta(seconds=path[-1][1]),
            }
        )
        source, entered = "awaiting_confirmation", None
        quota_wait = n % 19 == 0  # its first start waited for the team's quota (1 in 19)
        for seq, (target, offset, actor, kind) in enumerate(path, start=1):
            rows["transitions"].append(
                {
                    "order_id": n,
                    "seq": seq,
                    "at": t0 + timedelta(seconds=offset),
                    "actor": actor,
                    "from_status": source,
                    "to_status": target,
                    "entered_at": entered,
                    "exception_kind": kind if target == "exception" else None,
                    "quota_wait_s": offset if quota_wait and seq == 2 else None,
                }
            )
            data: dict[str, Any] = {"from": source, "to": target, "reason": "bench"}
            if kind:
                data["kind"] = kind
            rows["audit_events"].append(
                {
                    "chain": f"WO-{n}",
                    "seq": seq,
                    "at": t0 + timedelta(seconds=offset),
                    "actor": actor,
                    "kind": "transition",
                    "data": data,
                    "prev_hash": "-",
                    "hash": f"WO-{n}:{seq}",
                    "scheme": "sha256",
                }
            )
            source, entered = target, t0 + timedelta(seconds=offset)
        end_s = max(path[-1][1], 60)
        for i in range(calls_per_order + (1 if n <= extra_calls else 0)):
            role = "verify" if i % 5 == 4 else "execute"
            rows["llm_calls"].append(
                {
                    "order_id": n,
                    "role": role,
                    "provider": "anthropic",
                    "model": MODELS[workload] if role == "execute" else "gpt-5-mini",
                    "cost_micro_usd": rng.randrange(1_000, 200_000),
                    "created_at": t0 + timedelta(seconds=rng.uniform(0, end_s)),
                    "team": team,
                    "outcome": "ok",
                }
            )
        kind = "delegation" if n % 3 else "chat"
        rows["intake_sessions"].append(
            {
                "surface": "slack",
                "channel": "C1",
                "thread_ts": f"{n}.0",
                "requester": f"U{n % 200}",
                "kind": kind,
                "state": "confirmed",
                "rounds": 1,
                "transcript": [],
                "order_id": n if kind == "delegation" else None,
                "created_at": t0 - timedelta(minutes=5),
                "updated_at": t0,
            }
        )
    return rows


def _llm_defaults(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "input_tokens": 1000,
        "output_tokens": 200,
        "cache_write_tokens": 0,
        "cache_read_tokens": 0,
        "reserved_micro_usd": 0,
        "reserved_tokens": 0,
        "latency_ms": 800,
        **row,
    }


async def _load(url: str, rows: dict[str, list[dict[str, Any]]]) -> float:
    engine = create_engine(url)
    started = time.perf_counter()
    tables = SQLModel.metadata.tables
    try:
        for name in ("work_orders", "audit_events", "transitions", "llm_calls", "intake_sessions"):
            batch = rows[name]
            if name == "llm_calls":
                batch = [_llm_defaults(r) for r in batch]
            for i in range(0, len(batch), BATCH):
                async with engine.begin() as conn:
                    await conn.execute(insert(tables[name]), batch[i : i + BATCH])
        if is_sqlite(url):
            async with engine.begin() as conn:
                await conn.exec_driver_sql("ANALYZE")
        else:  # what autovacuum does after a bulk load (index-only scans need the visibility map)
            async with engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.exec_driver_sql("VACUUM ANALYZE")
    finally:
        await engine.dispose()
    return time.perf_counter() - started


async def _timed(label: str, work: Any) -> None:
    started = time.perf_counter()
    await work
    print(f"  {label:<58} {time.perf_counter() - started:7.3f} s")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="PostgreSQL URL (default: a SQLite file)")
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()

    url, name = await _scratch_database(args.url)
    try:
        engine = create_engine(url)
        await upgrade(engine)
        await engine.dispose()
        started = time.perf_counter()
        rows = _history(args.orders, args.calls)
        generated = time.perf_counter() - started
        loaded = await _load(url, rows)
        counts = {k: len(v) for k, v in rows.items()}
        del rows
        backend = "sqlite" if is_sqlite(url) else "postgresql"
        print(
            f"{backend}: {counts['work_orders']:,} orders, {counts['audit_events']:,} transitions, "
            f"{counts['llm_calls']:,} model calls, {counts['intake_sessions']:,} intake dialogues "
            f"(generated in {generated:.1f} s, loaded in {loaded:.1f} s)"
        )
        settings = load_settings(
            database_url=url,
            teams={t: {"weekly_usd": 1000.0, "members": []} for t in TEAMS},
        )
        engine = create_engine(url)
        week = Period.iso_week("2026-W20", "Europe/Berlin")
        year = Period("2025-12-01..2026-11-30", YEAR_START, YEAR_START + timedelta(days=365))

        async def digest(team: str) -> None:
            await build_digest(Reporting(engine), settings, team, week, weeks=CHART_WEEKS)

        async def figures() -> None:
            await _timed(
                "digest figures, team growth (week, week before, 8 weeks)", digest("growth")
            )
            await _timed("digest figures, whole workspace", digest(ALL))
            await _timed(
                "every figure, whole workspace, whole year (one period)",
                metrics.team_metrics(engine, settings, ALL, year),
            )
            await _timed(
                "every figure, team growth, whole year (one period)",
                metrics.team_metrics(engine, settings, "growth", year),
            )
            await _timed(
                "CSV export, team growth, 12 weeks",
                metrics.series_metrics(engine, settings, "growth", week.weeks_back(12)),
            )
            await _timed(
                "CSV export, whole workspace, 52 weeks",
                metrics.series_metrics(engine, settings, ALL, week.weeks_back(52)),
            )

        try:
            await metrics.team_metrics(engine, settings, "growth", week)  # warm the pool
            print("from the rows (no day summarised yet):")
            await figures()
            # As the hourly sweep would have by then: every day of the year has closed.
            started = time.perf_counter()
            days = await summarise_closed_days(engine, now=year.end + timedelta(hours=2))
            print(
                f"summarised {len(days)} closed days once in {time.perf_counter() - started:.1f} s"
                f" ({(time.perf_counter() - started) / max(len(days), 1) * 1000:.0f} ms a day)"
            )
            print("with the closed days summarised:")
            await figures()
        finally:
            await engine.dispose()
    finally:
        if args.keep:
            print(f"kept {url}")
        else:
            await _drop(args.url or "", name)


if __name__ == "__main__":
    asyncio.run(main())
