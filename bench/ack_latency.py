"""Ack latency of ignored channel chatter over HTTP: Delegate against a bare Bolt app.

    python -m bench.ack_latency [--url postgresql+asyncpg://postgres@127.0.0.1:5432/test]
                                [--rates 50,100,200,300,400] [--duration 20]

Each server runs in its own process on loopback: Delegate's HTTP surface (bot.server with the
Bolt app of bot.app, a scratch database, the fake Slack) and a bare slack-bolt AsyncApp with one
no-op `message` listener behind the same aiohttp adapter. An open-loop load generator in this
process sends signed Events API `message` events in a channel, none addressing the bot (three
in four top-level, one in four a reply in someone else's thread), at each rate for `duration`
seconds. Every send has a scheduled time; its latency is from that time to the response, so
queueing in the client and the server counts. Prints p50/p99/max and errors per rate and app,
and the saturation rate (the highest rate whose p99 stays under 100 ms without errors).
Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import aiohttp

SIGNING_SECRET = "bench-signing-secret-0123456789abcdef"
SATURATION_P99_MS = 100.0


# ------------------------------------------------------------------ the servers (subprocesses)


async def _serve_delegate(url: str | None) -> None:
    from bench.queue_and_budget import _drop, _scratch_database
    from bot.app import create_app
    from bot.server import build_web_app, start_site
    from bot.slack_client import make_slack_client
    from tests.fakes.anthropic import FakeAnthropic
    from tests.fakes.slack import FakeSlack
    from workers.config import load_settings
    from workers.providers import ModelRouter
    from workers.store import Store

    scratch, name = await _scratch_database(url)
    slack = await FakeSlack().start()
    anthropic = await FakeAnthropic().start()
    settings = load_settings(
        database_url=scratch,
        slack_bot_token=slack.token,
        slack_signing_secret=SIGNING_SECRET,
        slack_api_url=slack.api_url,
        anthropic_api_key=anthropic.api_key,
        anthropic_base_url=anthropic.base_url,
    )
    store = Store.from_url(scratch)
    router = ModelRouter.from_settings(settings, store)
    bolt = create_app(settings, store=store, client=make_slack_client(settings), completer=router)
    runner = await start_site(
        build_web_app(store=store, bolt=bolt, signing_secret=SIGNING_SECRET),
        host="127.0.0.1",
        port=0,
    )
    try:
        await _announce_and_wait(runner.addresses[0][1])
    finally:
        calls = {c.method for c in slack.calls}
        print(f"fake Slack saw: {sorted(calls)} ({len(slack.calls)} calls)", file=sys.stderr)
        await runner.cleanup()
        await router.close()
        await store.close()
        await slack.close()
        await anthropic.close()
        await _drop(url or "", name)


async def _serve_bolt() -> None:
    from aiohttp import web
    from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
    from slack_bolt.async_app import AsyncApp
    from slack_sdk.web.async_client import AsyncWebClient

    from bot.server import start_site
    from tests.fakes.slack import FakeSlack

    slack = await FakeSlack().start()
    bolt = AsyncApp(
        client=AsyncWebClient(token=slack.token, base_url=slack.api_url),
        signing_secret=SIGNING_SECRET,
    )

    @bolt.event("message")
    async def on_message() -> None:
        return None

    async def events(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await bolt.async_dispatch(await to_bolt_request(request)))

    app = web.Application()
    app.router.add_post("/slack/events", events)
    runner = await start_site(app, host="127.0.0.1", port=0)
    try:
        await _announce_and_wait(runner.addresses[0][1])
    finally:
        await runner.cleanup()
        await slack.close()


async def _announce_and_wait(port: int) -> None:
    print(f"READY {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()


# ------------------------------------------------------------------ the load generator


@dataclass
class Step:
    rate: int
    sent: int
    latencies_ms: list[float]
    errors: int

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def _request(n: int, roots: list[str]) -> tuple[bytes, dict[str, str]]:
    ts = f"{time.time():.6f}"
    event: dict[str, object] = {
        "type": "message",
        "channel": "C0CHATTER",
        "channel_type": "channel",
        "user": f"U{n % 40:03d}",
        "text": f"lunch at noon? message {n}, nothing for the bot here",
        "ts": ts,
        "event_ts": ts,
        "team": "T1",
    }
    if n % 4 == 3 and roots:
        event["thread_ts"] = roots[n % len(roots)]
    else:
        roots.append(ts)
        del roots[:-50]
    body = json.dumps(
        {
            "token": "verification-token",
            "team_id": "T1",
            "api_app_id": "A1",
            "type": "event_callback",
            "event_id": f"Ev{uuid.uuid4().hex[:12].upper()}",
            "event_time": int(time.time()),
            "event": event,
            "authorizations": [{"team_id": "T1", "user_id": "UBOT", "is_bot": True}],
        }
    ).encode()
    stamp = str(int(time.time()))
    digest = hmac.new(
        SIGNING_SECRET.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256
    )
    headers = {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": "v0=" + digest.hexdigest(),
    }
    return body, headers


async def run_step(session: aiohttp.ClientSession, url: str, rate: int, duration: float) -> Step:
    count = int(rate * duration)
    roots: list[str] = []
    requests = [_request(n, roots) for n in range(count)]
    step = Step(rate=rate, sent=count, latencies_ms=[], errors=0)
    loop = asyncio.get_running_loop()

    async def send(scheduled: float, body: bytes, headers: dict[str, str]) -> None:
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                ok = resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok:
            step.latencies_ms.append((loop.time() - scheduled) * 1000)
        else:
            step.errors += 1

    start = loop.time() + 0.2
    tasks = []
    for n, (body, headers) in enumerate(requests):
        scheduled = start + n / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(scheduled, body, headers)))
    await asyncio.gather(*tasks)
    return step


def _start_server(kind: str, url: str | None) -> tuple[subprocess.Popen[str], str]:
    profile = os.environ.get("BENCH_PROFILE")  # a path: cProfile the server into it
    command = [sys.executable, "-m", "bench.ack_latency", "--serve", kind]
    if profile:
        command[1:1] = ["-m", "cProfile", "-o", f"{profile}.{kind}"]
    if url:
        command += ["--url", url]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"the {kind} server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{line.split()[1]}/slack/events"


def _stop_server(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


async def bench(kind: str, url: str | None, rates: list[int], duration: float) -> list[Step]:
    proc, target = _start_server(kind, url)
    steps = []
    try:
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=512)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await run_step(session, target, 20, 1.0)  # warm up: auth.test, pools, caches
            for rate in rates:
                step = await run_step(session, target, rate, duration)
                steps.append(step)
                print(f"  {kind:8} {_row(step)}", flush=True)
                await asyncio.sleep(1.0)  # let the server drain before the next rate
    finally:
        _stop_server(proc)
    return steps


def _row(step: Step) -> str:
    return (
        f"{step.rate:4d}/s  sent {step.sent:5d}  "
        f"p50 {step.percentile(50):8.1f} ms  p99 {step.percentile(99):8.1f} ms  "
        f"max {max(step.latencies_ms, default=float('nan')):8.1f} ms  errors {step.errors}"
    )


def _saturation(steps: list[Step]) -> str:
    good = [s.rate for s in steps if s.errors == 0 and s.percentile(99) < SATURATION_P99_MS]
    return f"{max(good)}/s" if good else f"below {steps[0].rate}/s"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default=None, help="PostgreSQL URL (default: a SQLite file)")
    parser.add_argument("--rates", default="50,100,200,300,400")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per rate")
    parser.add_argument("--apps", default="delegate,bolt")
    parser.add_argument("--serve", choices=["delegate", "bolt"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "delegate":
        await _serve_delegate(args.url)
        return
    if args.serve == "bolt":
        await _serve_bolt()
        return
    rates = [int(r) for r in args.rates.split(",")]
    print(f"database: {'PostgreSQL' if args.url else 'SQLite'}; {args.duration:g} s per rate")
    results = {}
    for kind in args.apps.split(","):
        results[kind] = await bench(kind, args.url, rates, args.duration)
    print("\n| rate | " + " | ".join(f"{k} p50 / p99 / max (errors)" for k in results) + " |")
    print("|---|" + "---|" * len(results))
    for i, rate in enumerate(rates):
        cells = []
        for steps in results.values():
            s = steps[i]
            cells.append(
                f"{s.percentile(50):.1f} / {s.percentile(99):.1f} / "
                f"{max(s.latencies_ms, default=float('nan')):.1f} ms ({s.errors})"
            )
        print(f"| {rate}/s | " + " | ".join(cells) + " |")
    for kind, steps in results.items():
        print(
            f"saturation ({kind}, p99 < {SATURATION_P99_MS:.0f} ms, no errors): {_saturation(steps)}"
        )


if __name__ == "__main__":
    asyncio.run(main())
