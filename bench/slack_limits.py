"""Slack rate limits: the fake Slack enforcing Slack's per-method tiers while 100 orders finish.

    python -m bench.slack_limits [--url postgresql+asyncpg://postgres@127.0.0.1:5432/test]
                                 [--orders 100] [--channels 10] [--workers 2]
                                 [--concurrency 50] [--latency 2.0] [--exceptions 0.2]

`RateLimitedSlack` (below) is tests/fakes/slack.py's FakeSlack answering 429 with Retry-After
as Slack does once a method's limit is used up: chat.postMessage about one message per second
per channel (a bucket of 2, refilled at 1/s), and the published tiers per method workspace-wide
(tier 2 20/min, tier 3 50/min, tier 4 100/min; a bucket holding 10 s worth, at least 1). A 429
is recorded as a call like any other, and the call is not carried out.

A scratch PostgreSQL database gets `--orders` orders spread over `--channels` channels and
queued at once; `--workers` `delegate worker` processes run them (concurrency each), the fake
model answering after `--latency` s (read the thread, then submit), so they all finish within
about a minute. An `--exceptions` share of the orders has a spend ceiling too small for one
call, so they end in an exception instead of a review prompt.

Figures: Web API calls per method against the limits, 429s received, and from the database and
the fake's stored messages: results, questions and exceptions the engine owed a thread (its
outbox) that never reached it (dropped), and threads whose messages arrived in another order
than the engine wrote them (reordered). Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from bench._setup import (
    ScriptedModel,
    add_url_argument,
    bench_env,
    fake_servers,
    load_average,
    machine,
    queue_orders,
    scratch_database,
    wait_settled,
)
from tests.fakes.slack import Call, FakeSlack
from tests.support.processes import kill_worker, spawn_worker, stop_worker
from workers.config import load_settings
from workers.models import OutboxMessage, WorkOrderRow
from workers.store import Store
from workers.workorder import Budget

TIERS: dict[str, int] = {
    "auth.test": 100,
    "chat.update": 50,
    "chat.delete": 50,
    "chat.postEphemeral": 100,
    "chat.getPermalink": 100,
    "conversations.replies": 50,
    "users.info": 100,
    "views.open": 100,
    "views.update": 100,
    "views.publish": 100,
    "reactions.add": 50,
    "reactions.remove": 50,
    "assistant.threads.setStatus": 50,
    "files.getUploadURLExternal": 20,
    "files.completeUploadExternal": 20,
}
"""Calls per minute, workspace-wide (Slack's tiers 2, 3 and 4)."""
RANK = {"result": 2, "review": 3, "exception": 2}
"""Where each final sits in a thread: a result before its review prompt (questions and the
like in between). The status message is left out: the engine sends it last by design (only
the latest per order, at most one every status_update_interval_s)."""
POST_PER_S = 1.0
POST_BURST = 2.0


class _Bucket:
    def __init__(self, rate_per_s: float, capacity: float) -> None:
        self.rate, self.capacity = rate_per_s, capacity
        self.tokens, self.at = capacity, time.monotonic()

    def take(self) -> float:
        """0 if a call may go now (and takes its token); else the seconds until one may."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimitedSlack(FakeSlack):
    """FakeSlack with Slack's rate limits: over a limit, 429 `ratelimited` and Retry-After."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.buckets: dict[tuple[str, str], _Bucket] = {}
        self.limited: Counter[str] = Counter()

    def _bucket(self, method: str, channel: str) -> _Bucket | None:
        if method == "chat.postMessage":
            key, rate, capacity = (method, channel), POST_PER_S, POST_BURST
        elif method in TIERS:
            per_min = TIERS[method]
            key, rate, capacity = (method, ""), per_min / 60, max(1.0, per_min / 6)
        else:
            return None
        if key not in self.buckets:
            self.buckets[key] = _Bucket(rate, capacity)
        return self.buckets[key]

    def _answer(self, call: Call, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        bucket = self._bucket(call.method, str(call.args.get("channel") or ""))
        if bucket is not None and (wait := bucket.take()) > 0:
            self.limited[call.method] += 1
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return 429, {"ok": False, "error": "ratelimited"}
        return super()._answer(call, headers)


def _key(message: dict[str, Any]) -> str | None:
    key = ((message.get("metadata") or {}).get("event_payload") or {}).get("key")
    return str(key) if key else None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_url_argument(parser)
    parser.add_argument("--orders", type=int, default=100)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--exceptions", type=float, default=0.2)
    parser.add_argument("--deadline", type=float, default=600.0)
    parser.add_argument("--logs", type=Path, default=None)
    args = parser.parse_args()
    teams = {"default": {"weekly_usd": 100_000.0, "max_concurrent_runs_per_user": 100_000}}
    failing = max(1, round(1 / args.exceptions)) if args.exceptions else 0
    print(
        f"slack limits: {args.orders} orders in {args.channels} channels, {args.workers} "
        f"workers x {args.concurrency}, model latency {args.latency:g} s, 1 order in "
        f"{failing or 'none'} ends in an exception; {machine()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="slack-limits-") as tmp:
        workdir = args.logs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        slack = RateLimitedSlack()
        async with scratch_database(args.url, "bench_slack") as url, fake_servers(slack) as fakes:
            store = Store.from_url(url)
            settings = load_settings(database_url=url, teams=teams)
            try:
                await queue_orders(
                    store,
                    settings,
                    slack,
                    args.orders,
                    channel=lambda n: f"C{n % args.channels + 1}",
                    budget=lambda n: Budget(
                        max_usd=0.0001 if failing and n % failing == 0 else 2.0,
                        max_tokens=100_000,
                        max_wall_clock_s=900,
                        max_tool_calls=40,
                    ),
                )
                ScriptedModel(delay=args.latency).script(fakes.anthropic, args.orders * 3)
                env = bench_env(url, fakes, workdir, slack=slack, teams=teams)
                started = time.monotonic()
                processes = [
                    await spawn_worker(
                        env, workdir, worker_id=f"s{i}", concurrency=args.concurrency
                    )
                    for i in range(args.workers)
                ]
                try:
                    rested = await wait_settled(
                        store,
                        args.orders,
                        deadline_s=args.deadline,
                        say=lambda s: print(s, flush=True),
                    )
                    # Then until the engine owes no thread anything (or a minute more).
                    for _ in range(240):
                        if not [m for m in await store.outbox.undelivered() if not m.permanent]:
                            break
                        await asyncio.sleep(0.25)
                    delivered = time.monotonic() - started
                    load = load_average()
                finally:
                    await asyncio.gather(*(stop_worker(p, timeout_s=60) for p in processes))
                    for p in processes:
                        await kill_worker(p)
                async with store.transaction() as s:
                    owed = list(
                        (await s.exec(select(OutboxMessage).order_by(col(OutboxMessage.id)))).all()
                    )
                    rows = (await s.exec(select(WorkOrderRow.id, WorkOrderRow.status))).all()
                    states = Counter(status for _, status in rows)
                    by_order_state = {f"WO-{n}": status for n, status in rows}
            finally:
                await store.close()
            problems = fakes.problems()
    calls = Counter(c.method for c in slack.calls)
    # Where each owed message landed: its position among the stored messages of its channel.
    position: dict[str, tuple[str, int]] = {}
    copies: Counter[str] = Counter()
    for channel, messages in slack.messages.items():
        for i, message in enumerate(messages):
            if (key := _key(message)) is not None:
                copies[key] += 1
                position.setdefault(key, (channel, i))
    dropped = [m.key for m in owed if m.key not in position]
    # Per thread, the keys in the order Slack stored them; a final must come after the
    # status message, and a review prompt after the result it asks about.
    threads: dict[tuple[str, str], list[str]] = {}
    status_text: dict[str, str] = {}
    for channel, messages in slack.messages.items():
        for message in messages:
            if (key := _key(message)) is not None and message.get("thread_ts"):
                threads.setdefault((channel, message["thread_ts"]), []).append(key)
                if key.endswith(":status"):
                    status_text[key.split(":")[0]] = str(message.get("text"))
    reordered, finals_missing = [], []
    status_late = 0
    for (channel, _thread), keys in threads.items():
        order = keys[0].split(":")[0]
        kinds = [k.split(":")[1] for k in keys]
        finals = [k for k in kinds if k != "status"]
        if "status" in kinds and any(RANK.get(k, 1) > 1 for k in kinds[: kinds.index("status")]):
            status_late += 1
        if finals != sorted(finals, key=lambda k: RANK.get(k, 1)):
            reordered.append(
                f"{order} in {channel}: {' > '.join(kinds)} (status now: "
                f"{status_text.get(order, '')[:60]!r})"
            )
        state = by_order_state.get(order)
        need = {"awaiting_review": {"result", "review"}, "exception": {"exception"}}.get(
            state or "", set()
        )
        if not need <= set(kinds):
            finals_missing.append(f"{order} {state}: {kinds}")
    finals_missing += [
        f"{o} {st}: no thread messages"
        for o, st in by_order_state.items()
        if not any(k[0].split(":")[0] == o for k in threads.values())
    ]
    owed_kinds = Counter(m.kind for m in owed)
    print(
        f"all orders at rest after {rested or 0:.1f} s, every owed message delivered after "
        f"{delivered:.1f} s from spawn (load average {load}); states: {dict(states)}"
    )
    print(
        "Web API calls (429s): "
        + ", ".join(f"{m} {n} ({slack.limited[m]})" for m, n in calls.most_common())
    )
    print(f"429s received: {sum(slack.limited.values())} of {len(slack.calls)} calls")
    print(
        f"messages owed by the engine: {len(owed)} ({dict(owed_kinds)}); dropped: {len(dropped)} "
        f"{dropped[:5]}; posted twice: {sum(1 for c in copies.values() if c > 1)}; "
        f"given up (permanent): {sum(m.permanent for m in owed)}"
    )
    print(
        f"threads: {len(threads)}; finals missing (result + review prompt, or exception notice): "
        f"{len(finals_missing)} {finals_missing[:3]}; reordered finals (result, review prompt, "
        f"exception): {len(reordered)} {reordered[:3]}; threads whose status message was "
        f"first posted after a final: {status_late}, with none: "
        f"{sum('status' not in [k.split(':')[1] for k in keys] for keys in threads.values())}"
    )
    patterns = Counter(" > ".join(k.split(":")[1] for k in keys) for keys in threads.values())
    print("thread patterns: " + "; ".join(f"{n} x {p}" for p, n in patterns.most_common()))
    print(f"fake server problems: {problems[:3]}")
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    asyncio.run(main())
