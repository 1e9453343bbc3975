"""What `delegate run` and `delegate worker` check before they start: the doctor's own checks of
the Slack tokens and the model providers (bot.doctor.startup_checks).

A problem no retry fixes (a refused token, a missing key) stops the start with one line per
problem; one that may pass later (Slack or a provider cannot be reached) lets the process start,
turns /healthz red with the reason and is tried again with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from bot.doctor import Check, check_providers, startup_checks
from workers.config import Settings
from workers.errors import SetupError

log = logging.getLogger(__name__)

BACKOFF_S = 1.0
BACKOFF_MAX_S = 60.0

BOT_TOKEN_CHECK = "Slack auth.test"
APP_TOKEN_CHECK = "Slack Socket Mode"


def problem_line(check: Check) -> str:
    return f"{check.name}: {check.detail}; fix: {check.fix}" if check.fix else check.name


async def preflight(settings: Settings, *, socket_mode: bool) -> list[Check]:
    """Raise SetupError for what no retry fixes; return the checks that failed only because
    something could not be reached (logged as warnings)."""
    checks = await startup_checks(settings, socket_mode=socket_mode)
    fatal = _worth_saying([c for c in checks if not c.ok and not c.transient])
    if fatal:
        raise SetupError("\n".join(problem_line(c) for c in fatal))
    for check in checks:
        if check.warning:
            log.warning("%s: %s (%s)", check.name, check.detail, check.fix)
    pending = [c for c in checks if not c.ok]
    for check in _worth_saying(pending):
        log.warning("%s: %s; starting anyway, trying again", check.name, check.detail)
    return pending


def _worth_saying(failed: list[Check]) -> list[Check]:
    """Routes broken only because a provider's key is: naming the key is enough."""
    if any(c.name.endswith("API key") for c in failed):
        return [c for c in failed if not c.name.startswith("routing.")]
    return failed


def unreachable(pending: list[Check], name: str) -> str | None:
    """The detail of the pending check called `name`, if it is pending."""
    return next((c.detail for c in pending if c.name == name), None)


class Recheck:
    """Checks that could not be completed at start, tried again with back-off until they pass
    (or fail for good, which is logged once as an ERROR); `status` is their /healthz part."""

    def __init__(
        self,
        check: Callable[[], Awaitable[list[Check]]],
        failing: list[Check],
        *,
        backoff_s: float = BACKOFF_S,
    ) -> None:
        self.check = check
        self.failing = [c for c in failing if not c.ok]
        self.backoff_s = backoff_s

    @classmethod
    def providers(cls, settings: Settings, pending: list[Check]) -> Recheck:
        failing = [c for c in pending if c.name.endswith("API key") or "routing" in c.name]
        return cls(lambda: check_providers(settings), failing)

    async def status(self) -> tuple[bool, str]:
        if not self.failing:
            return True, "ok"
        retrying = "; retrying" if any(c.transient for c in self.failing) else ""
        said = _worth_saying(self.failing)
        return False, "; ".join(f"{c.name}: {c.detail}" for c in said) + retrying

    async def run(self, stop: asyncio.Event) -> None:
        delay = self.backoff_s
        while self.failing and any(c.transient for c in self.failing) and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            if stop.is_set():
                return
            delay = min(delay * 2, BACKOFF_MAX_S)
            try:
                self.failing = [c for c in await self.check() if not c.ok]
            except Exception as exc:  # keep the last answer; the next round tries again
                log.warning("check failed (%s); trying again", type(exc).__name__)
                continue
            if not self.failing:
                log.info("model providers reachable: every route has a working model")
            elif not any(c.transient for c in self.failing):
                said = _worth_saying(self.failing)
                log.error("cannot use the models: %s", " | ".join(map(problem_line, said)))
