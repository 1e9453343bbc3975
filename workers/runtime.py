"""The worker pool: claims orders, runs up to N at once under leases, recovers dead workers' runs,
and stops gracefully.

`run_worker(settings, concurrency=N)` is what `delegate worker` and `delegate run`
call; `delegate worker` is the one way to run a pool in a process of its own (the crash and
multi-process tests start it too). SIGTERM (or SIGINT) stops claiming, lets each run finish
its current step and checkpoint, puts it back in the queue and releases the lease; a step still
going after `engine.shutdown_grace_s` is cut off (its model call is charged the worst case) and
requeued from its last checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from workers import logs, queue, telemetry
from workers.agent import Agent, Outcome, RunControl
from workers.config import Settings
from workers.delivery import LocalDelivery
from workers.models import utcnow
from workers.progress import ProgressReporter
from workers.providers import ModelRouter
from workers.store import Claim, OrderRef, Store
from workers.store.outbox import SLACK
from workers.tools import ToolRegistry, load_tools
from workers.tools.files import FileSource
from workers.workorder import WorkOrder, format_order_id, parse_order_id

log = logging.getLogger(__name__)

# How often a worker looks for runs whose lease expired (at most; a fraction of the TTL).
REAP_INTERVAL_S = 5.0

# A worker that cannot renew a lease gives the run up this share of the TTL before the lease
# would expire: another worker may claim the order once it has, and must find it let go.
LEASE_STOP_MARGIN = 0.25

# How long a stopping worker waits for its lease keeper's query in flight.
LEASE_KEEPER_STOP_S = 15.0

# A claim loop silent for longer than this (or a few poll intervals, whichever is longer) is
# reported stalled by /healthz.
STALLED_LOOP_MIN_S = 60.0


def _error_note(error: str | None) -> str:
    return f" (last error: {error})" if error else ""


@dataclass
class _Running:
    order: WorkOrder
    task: asyncio.Task[Outcome]
    control: RunControl
    renewed_at: float
    """When its lease was last extended (the worker's clock, taken before the request)."""


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Claims and runs orders, at most `concurrency` at a time."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        router: ModelRouter,
        *,
        concurrency: int = 1,
        worker_id: str | None = None,
        tools: ToolRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.settings = settings
        self.store = store
        self.concurrency = concurrency
        self.worker_id = worker_id or default_worker_id()
        self.clock = clock
        self.now = now
        self.agent = Agent(
            settings=settings,
            store=store,
            router=router,
            tools=tools or load_tools(settings),
            worker_id=self.worker_id,
            clock=clock,
        )
        self.router = router
        self._warmed = False
        """The model SDKs are loaded (`_warm_for_work`)."""
        self.running: dict[int, _Running] = {}
        self.outcomes: deque[tuple[str, Outcome]] = deque(maxlen=1000)
        self._stopping = asyncio.Event()
        # Set when a run frees its slot or this process queues an order: claim now, not at the
        # next poll.
        self._wake = asyncio.Event()
        self._leases_done = asyncio.Event()
        self.last_pass: float | None = None
        """When the claim loop last completed a pass (the worker's clock); for health checks."""
        self.last_error: str | None = None
        self.paused = False
        """The last pass claimed nothing new because Slack refuses the bot token."""

    # Lifecycle

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Work until `stop` is set, then shut down gracefully."""
        logs.bind(worker=self.worker_id)
        stop = stop or asyncio.Event()
        stop_listening = self.store.on_queued(self._wake.set)
        # Other processes' queueings (PostgreSQL NOTIFY) wake the claim loop too.
        notified = asyncio.create_task(
            self.store.listen_for_queued(self._wake.set, self._stopping),
            name=f"queue-notifications {self.worker_id}",
        )
        claiming = asyncio.create_task(self._claim_loop(), name=f"claim-loop {self.worker_id}")
        leases = asyncio.create_task(self._keep_leases(), name=f"leases {self.worker_id}")
        stopped = asyncio.create_task(stop.wait(), name="stop-signal")
        try:
            done, _ = await asyncio.wait({claiming, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_listening()
            self._stopping.set()
            for task in (claiming, stopped):
                task.cancel()
            await asyncio.gather(claiming, stopped, return_exceptions=True)
            # The listener ends on `_stopping`; closing its connection is bounded.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(notified, LEASE_KEEPER_STOP_S)
            try:
                await self.shutdown()
            finally:
                # Stopped between queries, not cancelled in one: on SQLite a cancelled BEGIN
                # IMMEDIATE can still take the write lock in the driver's thread and keep it.
                self._leases_done.set()
                try:
                    await asyncio.wait_for(leases, LEASE_KEEPER_STOP_S)
                except TimeoutError:
                    log.warning("lease keeper did not stop in time; cancelled")
        if claiming in done and not claiming.cancelled() and claiming.exception() is not None:
            raise claiming.exception()  # type: ignore[misc]

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Stop claiming; let runs finish their step and requeue; cut off what is left."""
        self._stopping.set()
        grace_s = self.settings.engine.shutdown_grace_s if grace_s is None else grace_s
        running = list(self.running.values())
        for item in running:
            item.control.request_yield()
        if running:
            log.info("worker stopping: waiting for %d run(s) to reach a checkpoint", len(running))
            _, late = await asyncio.wait([r.task for r in running], timeout=grace_s)
            for item in running:
                if item.task in late:
                    item.control.stop("shutdown")
                    item.task.cancel()
            await asyncio.gather(*(r.task for r in running), return_exceptions=True)

    def interrupt(self, ref: OrderRef) -> bool:
        """Stop a local run at once after the order was cancelled (other workers poll)."""
        number = ref if isinstance(ref, int) else parse_order_id(ref)
        item = self.running.get(number)
        if item is None:
            return False
        item.control.stop("cancelled")
        item.task.cancel()
        return True

    # Claiming

    async def _claim_loop(self) -> None:
        engine = self.settings.engine
        reap_every = min(REAP_INTERVAL_S, engine.lease_ttl_s / 2)
        next_reap = 0.0
        while not self._stopping.is_set():
            # Cleared before the pass: a wake-up that comes during it starts the next one.
            self._wake.clear()
            try:
                if self.clock() >= next_reap:
                    next_reap = self.clock() + reap_every
                    await self._reap()
                # Slack refuses the bot token: no new runs whose results nobody would see.
                paused = self.paused = await self.store.outbox.problem(SLACK) is not None
                ready = paused or self._warmed or await self._warm_for_work()
                while (
                    ready
                    and not paused
                    and len(self.running) < self.concurrency
                    and not self._stopping.is_set()
                ):
                    claim = await queue.claim(
                        self.store, self.settings, self.worker_id, now=self.now()
                    )
                    if claim.order is None:
                        break
                    self._start(claim)
                self.last_pass, self.last_error = self.clock(), None
            except Exception as exc:
                self.last_error = type(exc).__name__
                log.exception("claim loop error; retrying", extra={"worker": self.worker_id})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(engine.poll_interval_s):
                    await self._wake.wait()

    async def _warm_for_work(self) -> bool:
        """Load the model SDKs once there is work, before the first claim; False while nothing
        is queued (nothing to claim, and nothing to load yet).

        Importing them holds the interpreter for a second or more: done on the event loop by a
        first call, it held up everything else (a separate worker's first status came 1.2 s
        late); done while a lease is held, it could miss its heartbeats on a loaded machine and
        be taken over mid-step. So it is done in a thread, with nothing claimed yet. Waiting
        for work spares a process that never runs an order (a bot whose orders other workers
        take, a health check, a restart) the import's CPU and memory."""
        if not await self.store.queue.any_queued():
            return False
        loading = asyncio.create_task(self.router.preload(), name="preload model SDKs")
        with contextlib.suppress(Exception):  # an SDK that cannot be imported fails its call
            await _unless_stopped(loading, self._stopping)
        if not loading.done():
            return False  # stopping
        self._warmed = True
        return True

    def loop_status(self) -> tuple[bool, str]:
        """(healthy, what to say) of the claim loop: a loop that has not completed a pass for
        a while is stuck (the database refuses it, or something blocks the event loop)."""
        engine = self.settings.engine
        allowed = max(STALLED_LOOP_MIN_S, 20 * engine.poll_interval_s, 2 * engine.lease_ttl_s)
        if self._stopping.is_set():
            return True, "stopping"
        if self.last_pass is None:
            return self.last_error is None, f"starting{_error_note(self.last_error)}"
        if self.paused:
            return False, "paused: no new work is claimed while Slack refuses the bot token"
        quiet = self.clock() - self.last_pass
        if quiet > allowed:
            return False, f"stalled: no pass for {quiet:.0f} s{_error_note(self.last_error)}"
        return True, "ok"

    async def _reap(self) -> None:
        # What the thread hears (back in the queue, or the crash notice) is written with the
        # change itself (workers.store.queue.reap_expired) and sent by the deliverer.
        await queue.reap(self.store, self.settings, actor=self.worker_id)

    def _start(self, claim: Claim) -> None:
        assert claim.order is not None and claim.attempt is not None and claim.order.id
        order, number = claim.order, parse_order_id(claim.order.id)
        control = RunControl()
        task = asyncio.create_task(self._run_one(claim, control), name=f"run {order.id}")
        self.running[number] = _Running(order, task, control, renewed_at=self.clock())
        telemetry.RUNS_IN_FLIGHT.inc()
        task.add_done_callback(lambda t: self._finished(number, t))

    async def _run_one(self, claim: Claim, control: RunControl) -> Outcome:
        assert claim.order is not None and claim.attempt is not None
        run_task = asyncio.current_task()
        assert run_task is not None
        # This task and those it starts log with the run's identity.
        logs.bind(order=claim.order.id, attempt=claim.attempt.id, worker=self.worker_id)
        started = time.monotonic()
        outcome = await self.agent.run(
            claim.order, claim.attempt, elapsed_ms=claim.elapsed_ms, control=control
        )
        log.info("run ended: %s %s", claim.order.id, outcome.kind)
        telemetry.RUN_DURATION.labels(outcome.kind).observe(time.monotonic() - started)
        return outcome

    async def _keep_leases(self) -> None:
        """Renew the leases of this worker's runs by heartbeat and notice cancellations, for all
        its runs in one query each time; stop a run whose lease is gone, or that could not be
        renewed for so long that the lease would expire before the next try."""
        engine = self.settings.engine
        give_up_after = engine.lease_ttl_s * (1 - LEASE_STOP_MARGIN)
        next_renewal = self.clock() + engine.heartbeat_s
        while not self._leases_done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(engine.cancel_poll_s, engine.heartbeat_s)):
                    await self._leases_done.wait()
            live = {n: r for n, r in self.running.items() if not r.control.ending}
            if not live:
                continue
            sent_at = self.clock()
            renew = sent_at >= next_renewal
            try:
                held, cancelled = await self.store.queue.check_leases(
                    live, self.worker_id, renew_ttl_s=engine.lease_ttl_s if renew else None
                )
            except Exception:
                log.exception("lease check failed", extra={"worker": self.worker_id})
                for number, item in live.items():
                    quiet = self.clock() - item.renewed_at
                    if quiet >= give_up_after and not item.control.ending:
                        log.warning(
                            "lease not renewed for %.0f s: giving the run up before it expires",
                            quiet,
                            extra={"order": format_order_id(number)},
                        )
                        self._stop_run(item, "lease_lost")
                continue
            if renew:
                next_renewal = sent_at + engine.heartbeat_s
                for number in held:
                    live[number].renewed_at = sent_at
            for number, item in live.items():
                if number not in held and not item.control.ending:
                    self._stop_run(item, "cancelled" if number in cancelled else "lease_lost")

    @staticmethod
    def _stop_run(item: _Running, reason: Literal["cancelled", "lease_lost"]) -> None:
        item.control.stop(reason)
        item.task.cancel()

    def _finished(self, number: int, task: asyncio.Task[Outcome]) -> None:
        item = self.running.pop(number, None)
        if item is not None:
            telemetry.RUNS_IN_FLIGHT.dec()
        self._wake.set()
        name = format_order_id(number)
        if task.cancelled():
            log.warning("run cancelled without an outcome", extra={"order": name})
            return
        error = task.exception()
        if error is not None:
            log.error("run crashed", exc_info=error, extra={"order": name})
            return
        outcome = task.result()
        self.outcomes.append((name, outcome))
        del item


async def run_worker(
    settings: Settings,
    *,
    concurrency: int = 1,
    reporter: ProgressReporter | None = None,
    store: Store | None = None,
    router: ModelRouter | None = None,
    tools: ToolRegistry | None = None,
    worker_id: str | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
    on_start: Callable[[Worker], object] | None = None,
    files: FileSource | None = None,
) -> None:
    """Run a worker pool until `stop` is set or SIGTERM/SIGINT arrives; `on_start` is handed
    the pool (for health checks); `files` is where read_file reads attached files (the Slack
    front door's), when the tools are built here.

    Runs talk to people only through the outbox (workers.store.outbox). A process with a Slack
    front door runs its `Deliverer` beside the pool and passes no `reporter`; without one, the
    pool says the outbox through `reporter` itself (`LocalDelivery`; tests, a log-only worker).
    The store and router are created from the settings unless given, and closed again if they
    were.
    """
    own_store = store is None
    store = store or Store.for_settings(settings)
    own_router = router is None
    router = router or ModelRouter.from_settings(settings, store)
    own_tools = tools is None
    tools = tools or load_tools(settings, files=files)
    # MCP servers are started (and their tools listed) before the first claim.
    await tools.start()
    stop = stop or asyncio.Event()
    local = LocalDelivery(store, reporter).start(stop) if reporter is not None else None
    worker = Worker(
        settings,
        store,
        router,
        concurrency=concurrency,
        worker_id=worker_id,
        tools=tools,
    )
    if on_start is not None:
        on_start(worker)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    log.info("worker %s started with concurrency %d", worker.worker_id, concurrency)
    try:
        await worker.run(stop)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        if local is not None:
            await local.close()
        if own_router:
            await router.close()
        if own_tools:
            await tools.close()
        if own_store:
            await store.close()
        log.info("worker %s stopped", worker.worker_id)


async def _unless_stopped(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Wait for `task`, or until `stop` is set (it is left running)."""
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        task.result()
