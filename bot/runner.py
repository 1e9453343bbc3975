"""Process lifecycles: `delegate run` (bot + workers + scheduler) and `delegate worker`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from aiohttp import web
from pydantic import SecretStr
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.app import create_app
from bot.attachments import SlackFiles
from bot.dedupe import recover_unhandled
from bot.delivery import Deliverer
from bot.digest_post import SlackDigestPublisher
from bot.home import HomePublisher
from bot.home_refresh import HomeRefresher
from bot.jobs import Jobs
from bot.preflight import BOT_TOKEN_CHECK, Recheck, preflight, unreachable
from bot.reporter import SlackReporter
from bot.server import HealthCheck, build_web_app, start_site
from bot.slack_client import make_slack_client
from bot.socket import SocketModeRunner
from bot.token_watch import SlackTokenWatch
from bot.unfurls import OrderLinks
from workers.audit_checkpoint import append_checkpoint, checkpoint_line
from workers.chart import render_chart
from workers.config import Settings
from workers.digest import DigestScheduler
from workers.errors import SetupError
from workers.followup import FollowUps
from workers.providers import ModelRouter
from workers.runtime import Worker, run_worker
from workers.store import Store
from workers.store.reporting.metric_days import SWEEP_INTERVAL_S

log = logging.getLogger(__name__)

DIGEST_SWEEP_S = 60
EVENT_RECOVERY_SWEEP_S = 60


def missing_slack_credentials(settings: Settings) -> str:
    """Empty if the bot can start; otherwise which variables are missing, in plain words."""
    missing = []
    if settings.slack_bot_token is None:
        missing.append("SLACK_BOT_TOKEN is not set")
    if settings.slack_app_token is None and settings.slack_signing_secret is None:
        missing.append(
            "SLACK_SIGNING_SECRET is not set (needed in HTTP mode; or set SLACK_APP_TOKEN for Socket Mode)"
        )
    return "; ".join(missing)


def add_audit_checkpoints(
    jobs: Jobs, settings: Settings, store: Store, client: AsyncWebClient
) -> None:
    """With `audit.checkpoint_path` or `audit.checkpoint_channel` set: a signed checkpoint of
    the audit trail at start, then every `audit.checkpoint_interval_s`, so that a rollback of
    the database shows against it."""
    audit = settings.audit
    if audit.checkpoint_path is None and audit.checkpoint_channel is None:
        return
    jobs.every(
        audit.checkpoint_interval_s,
        write_audit_checkpoint,
        args=(store, audit.checkpoint_path, client, audit.checkpoint_channel, {}),
        id="audit-checkpoint",
        at_start=True,
    )


async def write_audit_checkpoint(
    store: Store,
    path: Path | None,
    client: AsyncWebClient,
    channel: str | None,
    last: dict[str, str],
) -> None:
    """`last` remembers the heads' digest this process last wrote: an unchanged trail is not
    written again, since every line lists every chain's head and a quiet install's file would
    otherwise grow by all of them each hour for nothing."""
    # A failure is logged, not fatal: the bot keeps serving and the next run tries again.
    checkpoint = await store.audit.audit_checkpoint()
    if last.get("digest") == checkpoint.digest:
        return
    last["digest"] = checkpoint.digest
    summary = f"{checkpoint.chains} chains, {checkpoint.events} events"
    if path is not None:
        try:
            written = append_checkpoint(path, checkpoint)
        except OSError as exc:
            log.error("could not write the audit checkpoint to %s: %s", path, exc.strerror or exc)
        else:
            log.info("audit checkpoint: %s, appended to %s", summary, written)
    if channel is not None:
        try:
            await client.chat_postMessage(
                channel=channel,
                text=f"Audit checkpoint of {checkpoint.at}: {summary}. To verify against it, "
                "save the line below to a file and run `delegate audit verify --checkpoint "
                f"FILE`.\n```{checkpoint_line(checkpoint)}```",
            )
        except SlackApiError as exc:
            log.error(
                "could not post the audit checkpoint to %s: %s", channel, exc.response.get("error")
            )


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def run_bot(settings: Settings, *, host: str = "0.0.0.0", concurrency: int = 2) -> None:
    """Serve Slack (Socket Mode if SLACK_APP_TOKEN is set, else HTTP) until SIGTERM/SIGINT.

    Raises SetupError, before anything starts, for a refused token or a missing key, and while
    running if Slack refuses the app token."""
    socket_mode = settings.slack_app_token is not None
    pending = await preflight(settings, socket_mode=socket_mode)
    stop = _stop_event()
    store = Store.for_settings(settings)
    await store.upgrade(wait_s=settings.engine.startup_database_wait_s)
    client = make_slack_client(settings, shared_holds=store.rate_limits)
    token = SlackTokenWatch(
        store,
        client,
        recheck_s=settings.slack.token_check_s,
        unreachable=unreachable(pending, BOT_TOKEN_CHECK),
    )
    models = Recheck.providers(settings, pending)
    router = ModelRouter.from_settings(settings, store)
    # One per process: the bot's decisions and the worker pool's progress refresh App Homes
    # through it, so one person's publishes are coalesced whichever of them asks.
    homes = HomeRefresher(HomePublisher(settings, store=store, client=client).refresh)
    bolt = create_app(
        settings,
        store=store,
        client=client,
        completer=router,
        homes=homes,
        on_token_revoked=token.refused,
    )
    pools: list[Worker] = []
    checks: dict[str, HealthCheck] = {
        "worker_loop": _worker_loop_check(pools),
        "slack_token": token.status,
        "models": models.status,
    }
    refusals: list[str] = []

    def give_up(message: str) -> None:
        refusals.append(message)
        stop.set()

    web_runner = await start_site(
        build_web_app(
            store=store,
            bolt=None if socket_mode else bolt,
            signing_secret=_secret(settings.slack_signing_secret),
            checks=checks,
            order_thread=OrderLinks(settings, store=store, client=client).thread_of
            if settings.slack.order_links
            else None,
        ),
        host=host,
        port=settings.port,
    )
    log.info(
        "Delegate listening on %s:%d (%s mode)",
        host,
        settings.port,
        "Socket" if socket_mode else "HTTP",
    )
    socket_handler = None
    if settings.slack_app_token is not None:
        socket_handler = SocketModeRunner(
            bolt,
            app_token=settings.slack_app_token.get_secret_value(),
            settings=settings.slack,
            on_refused=give_up,
        )
        checks["socket_mode"] = socket_handler.status
        await socket_handler.start()  # connects in the background
    watches = [
        asyncio.create_task(token.run(stop), name="bot-token-watch"),
        asyncio.create_task(models.run(stop), name="model-recheck"),
    ]
    reporter = SlackReporter(store=store, client=client, home=homes, settings=settings)
    deliverer = Deliverer(store, reporter).start(stop)
    follow_ups = FollowUps(settings, store)
    jobs = Jobs()
    jobs.every(settings.review.sweep_interval_s, follow_ups.sweep, id="follow-ups")
    # Deliveries a dead process acknowledged but never finished: at start, then every minute.
    jobs.every(
        EVENT_RECOVERY_SWEEP_S,
        recover_unhandled,
        args=(bolt, store),
        id="event-recovery",
        at_start=True,
    )
    # Closed days of the leads' metrics, summarised once: at start (every past day, the first
    # time), then hourly.
    jobs.every(
        SWEEP_INTERVAL_S,
        store.reporting.summarise_closed_days,
        args=(jobs.stopping,),
        id="metric-days",
        at_start=True,
    )
    add_audit_checkpoints(jobs, settings, store, client)
    if settings.digests:
        # Every minute, and once at start so that a digest missed while down is caught up.
        digests = DigestScheduler(
            settings, store.reporting, SlackDigestPublisher(client), render_chart=render_chart
        )
        jobs.every(DIGEST_SWEEP_S, digests.sweep, id="digests", at_start=True)
    jobs.start()
    workers = asyncio.create_task(
        run_worker(
            settings,
            concurrency=concurrency,
            store=store,
            router=router,
            stop=stop,
            handle_signals=False,
            on_start=pools.append,
            files=SlackFiles(client),
        ),
        name="worker-pool",
    )
    try:
        # The worker pool returns when `stop` is set, or early if it fails: either ends the process.
        await asyncio.wait(
            [workers, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stop.set()
        [worker_outcome] = await asyncio.gather(workers, return_exceptions=True)
        await asyncio.gather(deliverer, *watches, return_exceptions=True)
        await jobs.stop()
        await homes.close()
        if socket_handler is not None:
            await socket_handler.close()
        await web_runner.cleanup()
        await router.close()
        await store.close()
        log.info("Delegate stopped")
    if isinstance(worker_outcome, Exception):
        raise worker_outcome
    if refusals:
        raise SetupError(refusals[0])


async def run_workers_only(
    settings: Settings,
    *,
    concurrency: int,
    worker_id: str | None = None,
    host: str = "0.0.0.0",
    port: int,
) -> None:
    """A worker pool that reports into Slack threads (or to the log without a bot token), with
    /healthz and /metrics of its own on `port`."""
    pending = await preflight(settings, socket_mode=False)
    store = Store.for_settings(settings)
    await store.upgrade(wait_s=settings.engine.startup_database_wait_s)
    homes: HomeRefresher | None = None
    stop = _stop_event()
    models = Recheck.providers(settings, pending)
    pools: list[Worker] = []
    checks: dict[str, HealthCheck] = {
        "worker_loop": _worker_loop_check(pools),
        "models": models.status,
    }
    tasks = [asyncio.create_task(models.run(stop), name="model-recheck")]
    files: SlackFiles | None = None
    if settings.slack_bot_token is not None:
        client = make_slack_client(settings, shared_holds=store.rate_limits)
        files = SlackFiles(client)
        token = SlackTokenWatch(
            store,
            client,
            recheck_s=settings.slack.token_check_s,
            unreachable=unreachable(pending, BOT_TOKEN_CHECK),
        )
        checks["slack_token"] = token.status
        tasks.append(asyncio.create_task(token.run(stop), name="bot-token-watch"))
        homes = HomeRefresher(HomePublisher(settings, store=store, client=client).refresh)
        slack = SlackReporter(store=store, client=client, home=homes, settings=settings)
        # Sends what any process owes a thread, including what a dead process left unsent.
        tasks.append(Deliverer(store, slack).start(stop))
    else:
        # The outbox is left to a process that can post: marking it sent here would lose it.
        log.warning(
            "SLACK_BOT_TOKEN is not set: progress goes to the log, and messages to people "
            "wait in the outbox for a process with a Slack token"
        )
    web_runner: web.AppRunner | None = None
    try:
        web_runner = await start_site(
            build_web_app(store=store, bolt=None, checks=checks), host=host, port=port
        )
        log.info("worker health and metrics on %s:%d", host, port)
        await run_worker(
            settings,
            concurrency=concurrency,
            store=store,
            worker_id=worker_id,
            stop=stop,
            handle_signals=False,
            on_start=pools.append,
            files=files,
        )
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        if homes is not None:
            await homes.close()
        if web_runner is not None:
            await web_runner.cleanup()
        await store.close()


def _worker_loop_check(pools: list[Worker]) -> HealthCheck:
    async def check() -> tuple[bool, str]:
        return pools[-1].loop_status() if pools else (True, "starting")

    return check


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
