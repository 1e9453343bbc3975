"""The process's periodic jobs (sweeps, digests, checkpoints), stopped together with the jobs
they are running.

APScheduler's own shutdown cancels a running coroutine job without waiting for it, and logs the
cancellation as the job's failure. A job still holding a database connection once the store had
closed kept `delegate run` from exiting after SIGTERM: aiosqlite's connection thread is not a
daemon. `stop()` cancels what runs, waits for it to unwind, then shuts the scheduler down."""

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
    def __init__(self) -> None:
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self._running: set[asyncio.Task[Any]] = set()
        self._stopping = False

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
        self._stopping = True
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def _tracked(
        self, job: Callable[..., Awaitable[Any]], name: str
    ) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(job)
        async def tracked(*args: Any) -> Any:
            task = asyncio.current_task()
            assert task is not None
            self._running.add(task)
            try:
                return await job(*args)
            except asyncio.CancelledError:
                if not self._stopping:
                    raise
                task.uncancel()
                # Every job is a sweep that picks up where it left off at the next start.
                log.info("stopped the %s job mid-run", name)
                return None
            finally:
                self._running.discard(task)

        return tracked
