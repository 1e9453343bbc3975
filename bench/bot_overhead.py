"""Bot overhead: what Delegate itself adds between a Slack request and its first answer.

    python -m bench.bot_overhead [--url postgresql+asyncpg://postgres@127.0.0.1:5432/test]
                                 [--mentions 50] [--starts 30] [--latency 0.5]
                                 [--poll-interval 1.0]

`delegate run` (the Slack bot in HTTP mode and a worker pool in one process, as deployed) runs
in its own process against a scratch PostgreSQL database and the fake Slack/Anthropic/OpenAI
servers on 127.0.0.1 (in this process). Requests are signed as Slack signs them
(tests/fakes/slack.py SlackSender) and sent one at a time:

- Mention -> first reply: an `app_mention` event starting an intake; the fake model answers
  with questions after `--latency` s; the first reply is the bot's chat.postMessage in that
  thread.
- Start -> first status update: a Start click (block_actions) on a confirmed order's card; the
  first status update is the worker's first chat.postMessage of the order's status message
  (key `WO-n:status`). The run's model calls answer after `--latency` s too.

Each time runs from just before the request is sent until the fake Slack receives the call; the
fake model's time (the delays of the model calls that order made before that moment) is
subtracted, leaving what Delegate adds: HTTP, Bolt, database, the queue's claim (polled every
`--poll-interval` s, engine.poll_interval_s, default 1 s) and the Slack client. p50/p99/max.
Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

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
from bot.cards import START_ACTION
from tests.fakes.anthropic import Reply
from tests.fakes.slack import Call, FakeSlack, SlackSender
from tests.support.factories import make_order
from tests.support.intake import questions
from tests.support.processes import REPO, kill_worker, stop_worker
from workers.store import Store
from workers.workorder import Status

SIGNING_SECRET = "bench-signing-secret-0123456789abcdef"
ORDER_RE = re.compile(r"Bench order (\d+)")


class TimedSlack(FakeSlack):
    """FakeSlack noting when each call arrived (monotonic clock of this process)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arrived: dict[int, float] = {}

    def _answer(self, call: Call, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.arrived[id(call)] = time.monotonic()
        return super()._answer(call, headers)


class TimedModel:
    """Scripted replies noting, per order (or mention), when each call was answered."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.answered: dict[str, list[float]] = {}

    def _note(self, tag: str) -> None:
        self.answered.setdefault(tag, []).append(time.monotonic() + self.latency_s)

    def model_time(self, tag: str, until: float) -> float:
        return sum(self.latency_s for t in self.answered.get(tag, []) if t <= until)

    def intake(self, body: dict[str, Any]) -> Reply:
        found = re.search(r"mention (\d+)", json.dumps(body))
        self._note(f"m{found.group(1) if found else '?'}")
        return Reply.tool(
            "intake_decision",
            questions("Which competitors?", "What form?").tool_uses[0].input,
            delay=self.latency_s,
        )

    def run(self, body: dict[str, Any]) -> Reply:
        found = ORDER_RE.search(json.dumps(body))
        self._note(f"o{found.group(1) if found else '?'}")
        last = body["messages"][-1]["content"]
        answered = isinstance(last, list) and any(b.get("type") == "tool_result" for b in last)
        if not answered:
            return Reply.tool("read_thread", {}, delay=self.latency_s)
        return Reply.tool(
            "submit_deliverable", {"content": "done", "summary": "done"}, delay=self.latency_s
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _first_call(
    slack: TimedSlack, match: Any, *, since: int, within: float = 30.0
) -> float | None:
    """Arrival time of the first call from index `since` on that `match`es, or None."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for call in slack.calls[since:]:
            if match(call) and id(call) in slack.arrived:
                return slack.arrived[id(call)]
        await asyncio.sleep(0.002)
    return None


def _summary(name: str, values: list[float], misses: int) -> str:
    return (
        f"{name} ({len(values)} samples, {misses} missed): p50 {ms(percentile(values, 0.5))}, "
        f"p99 {ms(percentile(values, 0.99))}, max {ms(max(values, default=None))}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_url_argument(parser)
    parser.add_argument("--mentions", type=int, default=50)
    parser.add_argument("--starts", type=int, default=30)
    parser.add_argument("--latency", type=float, default=0.5, help="fake model latency (s)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="engine.poll_interval_s")
    parser.add_argument("--logs", type=Path, default=None)
    args = parser.parse_args()
    print(
        f"bot overhead: {args.mentions} mentions, {args.starts} Start clicks, one at a time; "
        f"model latency {args.latency:g} s; poll interval {args.poll_interval:g} s; {machine()}",
        flush=True,
    )
    slack = TimedSlack()
    model = TimedModel(args.latency)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bot-overhead-") as tmp:
        workdir = args.logs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        async with scratch_database(args.url, "bench_bot") as url, fake_servers(slack) as fakes:
            env = bench_env(
                url,
                fakes,
                workdir,
                slack=slack,
                lease_ttl_s=60,
                heartbeat_s=15,
                cancel_poll_s=1.0,
                poll_interval_s=args.poll_interval,
            )
            env |= {"SLACK_SIGNING_SECRET": SIGNING_SECRET, "PORT": str(port)}
            log = (workdir / "delegate-run.log").open("wb")
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot.cli",
                "run",
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
            store = Store.from_url(url)
            sender = SlackSender(f"http://127.0.0.1:{port}", SIGNING_SECRET, slack=slack)
            mention_s: list[float] = []
            start_s: list[float] = []
            misses = {"mention": 0, "start": 0}
            try:
                async with aiohttp.ClientSession() as http:
                    for _ in range(300):
                        try:
                            async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                                if r.status < 500:
                                    break
                        except aiohttp.ClientError:
                            pass
                        await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)  # the worker pool's first pass
                # Mention -> first reply.
                for n in range(args.mentions):
                    fakes.anthropic.script(model.intake)
                    event = sender.app_mention(
                        f"<@UBOT> help with pricing, mention {n}", channel="C1", user=f"U{n}"
                    )
                    since = len(slack.calls)
                    sent = time.monotonic()
                    status, _ = await sender.event(event)
                    arrived = await _first_call(
                        slack,
                        lambda c, ts=event["ts"]: (
                            c.method == "chat.postMessage" and c.args.get("thread_ts") == ts
                        ),
                        since=since,
                    )
                    if status != 200 or arrived is None:
                        misses["mention"] += 1
                        continue
                    mention_s.append(arrived - sent - model.model_time(f"m{n}", arrived))
                # Start -> first status update.
                for n in range(args.starts):
                    thread_ts = f"1600000000.{n + 1:06d}"
                    slack.add_message("C2", f"please do task {n}", user="U1", ts=thread_ts)
                    order = await store.orders.create_order(
                        make_order(
                            title=f"Bench order {n}",
                            requester="U1",
                            channel="C2",
                            thread_ts=thread_ts,
                            status=Status.AWAITING_CONFIRMATION,
                        ),
                        actor="U1",
                    )
                    fakes.anthropic.script(model.run, model.run, model.run)
                    click = sender.block_action(
                        START_ACTION,
                        order.id or "",
                        user_id="U1",
                        channel_id="C2",
                        message_ts=f"1600000001.{n + 1:06d}",
                        thread_ts=thread_ts,
                    )
                    key = f"{order.id}:status"
                    since = len(slack.calls)
                    sent = time.monotonic()
                    status, _ = await sender.action(click)
                    arrived = await _first_call(
                        slack,
                        lambda c, key=key: (
                            c.method == "chat.postMessage"
                            and ((c.args.get("metadata") or {}).get("event_payload") or {}).get(
                                "key"
                            )
                            == key
                        ),
                        since=since,
                    )
                    if status != 200 or arrived is None:
                        misses["start"] += 1
                        continue
                    start_s.append(arrived - sent - model.model_time(f"o{n}", arrived))
                    await asyncio.sleep(args.latency * 2 + 0.5)  # let the run end
                load = load_average()
            finally:
                await store.close()
                try:
                    await stop_worker(process, timeout_s=30)
                finally:
                    await kill_worker(process)
            problems = fakes.problems()
    print(_summary("mention -> first reply, minus model time", mention_s, misses["mention"]))
    print(_summary("Start -> first status update, minus model time", start_s, misses["start"]))
    print(f"fake server problems: {problems[:3]}")
    print(f"load average at the end: {load} (now {load_average()})")


if __name__ == "__main__":
    asyncio.run(main())
