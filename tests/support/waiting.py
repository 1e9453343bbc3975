"""Waiting on conditions instead of the clock.

A test waits until something has happened (`eventually`) or until the bot has finished handling
everything it was sent (`bot_idle`), never for a fixed pause. Deadlines are generous: they only
fail a test whose condition never comes true, so a slow or loaded machine makes a test slower,
not red.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

# Long enough for a loaded 2-core CI machine; a test only ever waits this long when it fails.
DEADLINE_S = 30.0
# ... and for a wait that includes starting a `delegate` process and its first order (imports,
# the model SDKs, an MCP server): about 8 s on an idle machine, over 30 s on a slow, busy one.
PROCESS_START_S = 120.0

Predicate = Callable[[], object | Awaitable[object]]


async def eventually(
    predicate: Predicate, *, timeout_s: float = DEADLINE_S, interval_s: float = 0.05
) -> None:
    """Wait until `predicate()` (or `await predicate()`) is truthy; fail if it never is."""
    async with asyncio.timeout(timeout_s):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(interval_s)


_BOLT = f"{os.sep}slack_bolt{os.sep}"


def running_listeners() -> list[asyncio.Task[object]]:
    """The Bolt listeners still running in this event loop.

    Bolt acknowledges a request and runs its listener as a separate task (started before the
    acknowledgement is returned), so once the test has Slack's responses in hand these tasks
    are all the work the bot still has to do.
    """
    running = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if not task.done() and code is not None and _BOLT in code.co_filename:
            running.append(task)
    return running


async def bot_idle(*, timeout_s: float = DEADLINE_S) -> None:
    """Wait until every in-process bot has finished handling what it was sent.

    Use it before asserting that something did *not* happen ("no second post"): after the bot
    is idle nothing more will come of the requests sent so far.
    """
    await eventually(lambda: not running_listeners(), timeout_s=timeout_s, interval_s=0.02)
