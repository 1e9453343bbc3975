"""The process's periodic jobs (sweeps, digests, checkpoints), stopped together with the jobs
they are running.

APScheduler's own shutdown cancels a running coroutine job without waiting for it, and logs the
cancellation as the job's failure. A job still holding a database connection once the store had
closed kept `delegate run` from exiting after SIGTERM: aiosqlite's connection thread is not a
daemon. `stop()` sets `stopping` (a long sweep looks at it between its units of work and
returns), gives what runs `grace_s` to end, cancels what has not, waits for it to unwind, then
shuts the scheduler down. Cancelling is the fallback: a PostgreSQL query cut off by it leaves
asyncpg's connection to be torn down under the closing store."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger(__name__)


class Jobs:
    def __init__(self, *, grace_s: float = 5.0) -> None:
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self.grace_s = grace_s
        self.stopping = asyncio.Event()
        """Set by `stop()`: a job that loops stops at its next unit of work."""
        self._running: dict[asyncio.Task[Any], str] = {}

    def every(
        self,
        seconds: float,
        job: Callable[..., Awaitable[Any]],
        *,
        id: str,
        args: tuple[Any, ...] = (),
        at_start: bool = False,
    ) -> None:
        """Run `job(*args)` every `seconds`, never two at once, and once at start if `at_start`."""
        start = {"next_run_time": datetime.now(UTC)} if at_start else {}
        self.scheduler.add_job(
            self._tracked(job, id),
            "interval",
            args=args,
            seconds=seconds,
            id=id,
            max_instances=1,
            coalesce=True,
            **start,
        )

    def start(self) -> None:
        self.scheduler.start()

    async def stop(self) -> None:
        self.stopping.set()
        running = dict(self._running)
        if running:
            _, late = await asyncio.wait(running, timeout=self.grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            for name in running.values():
                # Every job is a sweep that picks up where it left off at the next start.
                log.info("stopped the %s job mid-run", name)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def _tracked(
        self, job: Callable[..., Awaitable[Any]], name: str
    ) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(job)
        async def tracked(*args: Any) -> Any:
            task = asyncio.current_task()
            assert task is not None
            self._running[task] = name
            try:
                return await job(*args)
            except asyncio.CancelledError:
                if not self.stopping.is_set():
                    raise
                task.uncancel()  # cut off by stop(), which says so
                return None
            finally:
                self._running.pop(task, None)

        return tracked
