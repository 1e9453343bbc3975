"""The bot token's standing, as this process knows it: accepted, refused, or not known because
Slack cannot be reached.

Slack can refuse the token at any time (revoked, the app uninstalled, the workspace gone). Every
Web API call reports such a refusal here (`InstrumentedWebClient.on_token_refused`), as do the
`app_uninstalled` and `tokens_revoked` events, and `auth.test` is asked every
`slack.token_check_s` so that a quiet process finds out too. A refusal is recorded in
`service_health`, so that every process's worker pool stops claiming new work and /healthz
answers 503, and is logged once as an ERROR. It is lifted when `auth.test` accepts the token
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack_client import AUTH_ERRORS, InstrumentedWebClient
from workers.store import Store
from workers.store.outbox import SLACK

log = logging.getLogger(__name__)

BACKOFF_S = 1.0
BACKOFF_MAX_S = 60.0

TOKEN_REFUSED = (
    "Slack refused the bot token (%s): no new work is claimed and /healthz answers 503 until "
    "it works again; fix: reinstall the app and set SLACK_BOT_TOKEN to its Bot User OAuth Token"
)

State = Literal["ok", "unreachable", "refused"]


def slack_problem(error: str) -> str:
    """What `service_health` and /healthz say about a refused token."""
    return f"token revoked ({error})" if error == "token_revoked" else f"token refused ({error})"


class SlackTokenWatch:
    """Keeps `state` current; `status` is its /healthz part."""

    def __init__(
        self,
        store: Store,
        client: AsyncWebClient,
        *,
        recheck_s: float,
        unreachable: str | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.recheck_s = recheck_s
        self.state: State = "unreachable" if unreachable else "ok"
        self.detail = unreachable or ""
        if isinstance(client, InstrumentedWebClient):
            client.on_token_refused = self.refused

    async def refused(self, error: str) -> None:
        """Slack refused the token (`error`), or said it was revoked: stop work, say so once."""
        if self.state != "refused":
            self.state, self.detail = "refused", error
            log.error(TOKEN_REFUSED, error)
        await self.store.outbox.report_problem(SLACK, slack_problem(error))

    async def status(self) -> tuple[bool, str]:
        if self.state == "ok":
            return True, "ok"
        if self.state == "refused":
            return False, f"refused ({self.detail}): set a valid SLACK_BOT_TOKEN"
        return False, f"unreachable: {self.detail}; retrying"

    async def check(self) -> None:
        """Ask `auth.test` once and update the state."""
        try:
            await self.client.auth_test()
        except SlackApiError as exc:
            error = str(exc.response.get("error") or "")
            if error in AUTH_ERRORS:
                await self.refused(error)
            else:
                self._unreachable(f"Slack answered {error or exc.response.status_code}")
            return
        except Exception as exc:  # a network failure says nothing about the token
            self._unreachable(f"cannot reach Slack ({type(exc).__name__})")
            return
        if self.state != "ok":
            log.info("Slack accepts the bot token again")
        if self.state == "refused" or await self.store.outbox.problem(SLACK) is not None:
            await self.store.outbox.clear_problem(SLACK)
        self.state, self.detail = "ok", ""

    def _unreachable(self, reason: str) -> None:
        if self.state == "ok":
            log.warning("Slack's auth.test failed (%s); trying again", reason)
        if self.state != "refused":  # a refusal stands until Slack accepts the token
            self.state, self.detail = "unreachable", reason

    async def run(self, stop: asyncio.Event) -> None:
        """Check every `recheck_s`, sooner (with back-off) while Slack cannot be reached."""
        backoff = BACKOFF_S
        while not stop.is_set():
            if self.state == "unreachable":
                delay, backoff = backoff, min(backoff * 2, BACKOFF_MAX_S)
            else:
                delay, backoff = self.recheck_s, BACKOFF_S
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            if stop.is_set():
                return
            try:
                await self.check()
            except Exception as exc:  # the database is down: the next round tries again
                log.warning("bot token check failed (%s)", type(exc).__name__)
