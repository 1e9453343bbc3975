"""Delivering the durable outbox (workers.store.outbox) into Slack threads.

Every process with a Slack client (`delegate run`, `delegate worker`) runs a `Deliverer`: it
claims the messages that are due, sends each through the `SlackReporter` (rendered from the
order's current row) and marks it sent. Messages that were written by a process that died
before sending them are simply due: whichever process looks next sends them, once (their
idempotency keys make a second attempt find the first post). A claim on a message is short
(`OUTBOX_CLAIM_S`) and renewed while its send goes on, so what a process that died had claimed
goes out from another one within seconds, not minutes.

What Slack answers decides what happens next, per message, so one order's trouble never holds
up another's:

- rate limits, server errors, timeouts: the message backs off on its own row and is retried;
  it is never dropped.
- errors that no retry fixes (archived channel, bot not in the channel, a message Slack
  rejects): the message is marked permanent and its order flagged (a `delivery_failed` audit
  event); `delegate doctor` and `/healthz` list them with their fix.
- a revoked or invalid bot token: recorded in `service_health` so every process sees it; the
  worker pools stop claiming new work, `/healthz` turns red, and `auth.test` is re-checked
  until the token works again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from slack_sdk.errors import SlackApiError

from bot.reporter import SlackReporter
from bot.slack_client import AUTH_ERRORS, looking_before_repeating
from bot.token_watch import slack_problem
from workers.errors import Busy, NotFound, RetryLater
from workers.models import OutboxMessage
from workers.store import Store
from workers.store.outbox import SLACK
from workers.store.slack import RENEWED_CLAIMS, RenewedClaims

log = logging.getLogger(__name__)

PERMANENT_ERRORS = frozenset(
    {
        "channel_not_found",
        "is_archived",
        "not_in_channel",
        "msg_too_long",
        "invalid_blocks",
        "invalid_blocks_format",
        "invalid_metadata_format",
        "invalid_metadata_schema",
        "no_text",
        "too_many_attachments",
        "restricted_action",
        "restricted_action_read_only_channel",
        "restricted_action_thread_only_channel",
        "restricted_action_non_threadable_channel",
        "cannot_reply_to_message",
        "thread_not_found",
        "missing_scope",
        "ekm_access_denied",
    }
)
"""Errors no retry fixes: a person has to act (invite the bot, unarchive, fix the message)."""

FIXES = {
    "not_in_channel": "invite the bot to the channel (/invite @Delegate)",
    "channel_not_found": "the channel was deleted or is private to the bot: check it",
    "is_archived": "the channel is archived: unarchive it or move the order",
    "missing_scope": "add the missing scope in the app settings and reinstall",
}


OUTBOX_CLAIM_S = 15.0
"""How long a deliverer's claim on a message lasts unless renewed. It is renewed every third of
that while the send goes on, so the messages a killed process had claimed wait at most this long
for another process; a slow send keeps its claim however long Slack takes."""


def fix_for(error: str | None) -> str:
    return FIXES.get(error or "", "invite the bot / check the channel")


class Deliverer:
    """Sends due outbox messages until stopped; `deliver_due` is one pass (tests call it)."""

    def __init__(
        self,
        store: Store,
        reporter: SlackReporter,
        *,
        poll_s: float = 1.0,
        batch: int = 20,
        claim_s: float = OUTBOX_CLAIM_S,
        backoff_s: float = 2.0,
        max_backoff_s: float = 300.0,
        auth_recheck_s: float = 30.0,
    ) -> None:
        self.store = store
        self.reporter = reporter
        self.owner = reporter.owner
        self.poll_s = poll_s
        self.batch = batch
        self.claim_s = claim_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.auth_recheck_s = auth_recheck_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: dict[int, RenewedClaims] = {}
        """The claimed messages whose send has not ended, with the keys each send claimed:
        their claims are renewed."""

    def start(self, stop: asyncio.Event) -> asyncio.Task[None]:
        # Whatever this process's transactions write goes out now, not at the next poll.
        unsubscribe = self.store.on_outbox(self.kick)
        self._task = asyncio.create_task(self.run(stop), name="outbox-deliverer")
        self._task.add_done_callback(lambda _: unsubscribe())
        return self._task

    def kick(self) -> None:
        """Look now (something was just written)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Keep up to `batch` sends in flight, claiming more as each one ends: a send Slack is
        slow to answer (a timeout, the client's own retries) holds up only its own order."""
        next_auth_check = 0.0
        loop = asyncio.get_running_loop()
        next_renewal = loop.time() + self.claim_s / 3
        sending: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                self._wake.clear()
                # Until the next message falls due (a back-off ending), or the next poll: what
                # this process writes wakes it at once, what others write waits for the poll.
                wait_s = self.poll_s
                try:
                    if await self.store.outbox.problem(SLACK) is not None:
                        if loop.time() >= next_auth_check:
                            next_auth_check = loop.time() + self.auth_recheck_s
                            await self.check_token()
                    else:
                        due_in = await self._claim_more(sending)
                        if due_in is not None:
                            wait_s = min(wait_s, due_in)
                    if loop.time() >= next_renewal:
                        next_renewal = loop.time() + self.claim_s / 3
                        await self._renew_claims()
                    if self._in_flight:
                        wait_s = min(wait_s, max(0.0, next_renewal - loop.time()))
                except Exception:
                    log.exception("outbox delivery pass failed; retrying")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await _first(stop.wait, self._wake.wait)
        finally:
            # Sends are finished, never cut off: a post cut off mid-call is an uncertain post.
            await asyncio.gather(*sending, return_exceptions=True)

    async def _claim_more(self, sending: set[asyncio.Task[None]]) -> float | None:
        """Claim and start sending what is due while a slot is free; then the seconds until
        the next message falls due (None: none is waiting; a full batch looks again when a
        send ends)."""
        while (free := self.batch - len(sending)) > 0:
            messages, due_in = await self.store.outbox.claim_due(
                self.owner, limit=free, claim_s=self.claim_s
            )
            for message in messages:
                task = asyncio.create_task(self._send(message), name=f"send {message.key}")
                sending.add(task)
                task.add_done_callback(lambda done: self._sent(done, sending))
            if len(messages) < free:
                return due_in
        return None

    def _sent(self, task: asyncio.Task[None], sending: set[asyncio.Task[None]]) -> None:
        sending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # _send records every Slack outcome; this is its bookkeeping failing (the database).
            # The claim runs out and the message is sent again then.
            log.error("outbox send failed", exc_info=exc)
        self.kick()  # a slot is free

    async def check_token(self) -> bool:
        """auth.test: clear the recorded token problem if Slack accepts the token again."""
        try:
            await self.reporter.client.auth_test()
        except SlackApiError as exc:
            error = str(exc.response.get("error") or "")
            if error in AUTH_ERRORS:
                await self.store.outbox.report_problem(SLACK, slack_problem(error))
                return False
            log.warning("auth.test failed (%s); will check again", error)
            return False
        except Exception as exc:  # Slack unreachable: says nothing about the token
            log.warning("auth.test failed (%s); will check again", type(exc).__name__)
            return False
        if await self.store.outbox.problem(SLACK) is not None:
            log.info("Slack accepts the bot token again: resuming delivery and claiming")
            await self.store.outbox.clear_problem(SLACK)
        return True

    async def deliver_due(self) -> int:
        """Claim and send what is due now, each order's message concurrently; how many."""
        messages = await self.store.outbox.claim_outbox(self.owner, limit=self.batch, claim_s=self.claim_s)
        if messages:
            await asyncio.gather(*(self._send(m) for m in messages))
        return len(messages)

    async def _renew_claims(self) -> None:
        sends = list(self._in_flight.items())
        await self.store.outbox.renew_send_claims(
            self.owner,
            [message_id for message_id, _ in sends],
            {key for _, claims in sends for key in claims.keys},
            claim_s=self.claim_s,
        )

    async def _send(self, message: OutboxMessage) -> None:
        assert message.id is not None
        claims = self._in_flight.setdefault(message.id, RenewedClaims(self.claim_s))
        # Each send is a task of its own, so the key claims it makes are its own.
        RENEWED_CLAIMS.set(claims)
        try:
            await self._send_claimed(message)
        finally:
            self._in_flight.pop(message.id, None)

    async def _send_claimed(self, message: OutboxMessage) -> None:
        assert message.id is not None
        extra = {"order": f"WO-{message.order_id}" if message.order_id else "", "key": message.key}
        try:
            with looking_before_repeating():
                await self.reporter.deliver(message)
        except Busy as exc:  # another process is posting it: no further back-off
            await self.store.outbox.outbox_retry(message.id, after_s=exc.after_s, error=str(exc))
        except RetryLater as exc:
            await self._retry(message, str(exc), at_least_s=exc.after_s)
        except SlackApiError as exc:
            error = str(exc.response.get("error") or f"http {exc.response.status_code}")
            if error in AUTH_ERRORS:
                # The ERROR line is bot.token_watch's, once per process, not once per message.
                log.info("kept until Slack accepts the bot token again (%s)", error, extra=extra)
                await self.store.outbox.report_problem(SLACK, slack_problem(error))
                await self.store.outbox.outbox_retry(message.id, after_s=0, error=error)
            elif error in PERMANENT_ERRORS:
                log.error(
                    "message cannot be delivered (%s): %s", error, fix_for(error), extra=extra
                )
                await self.store.outbox.outbox_failed(message.id, error=error, actor="deliverer")
                await self._tell_requester(message)
            else:
                await self._retry(message, error)
        except NotFound as exc:
            log.error("message cannot be delivered: %s", exc, extra=extra)
            await self.store.outbox.outbox_failed(message.id, error=str(exc), actor="deliverer")
        except Exception as exc:  # timeouts, connection errors: try again later
            log.warning("outbox delivery failed (%s); will retry", type(exc).__name__, extra=extra)
            await self._retry(message, f"{type(exc).__name__}: {exc}")
        else:
            await self.store.outbox.outbox_sent(message.id, self.owner)

    async def _tell_requester(self, message: OutboxMessage) -> None:
        """The requester's App Home lists what could not reach their thread."""
        if self.reporter.home is None:
            return
        try:
            if message.order_id is not None:
                self.reporter.home.order_changed(await self.store.orders.get_order(message.order_id))
            elif message.intake_id is not None:  # a dialogue's reply: its requester's Home
                session = await self.store.slack.intake_by_id(message.intake_id)
                if session is not None:
                    self.reporter.home.request(session.requester)
        except Exception:  # the failure is recorded; the Home catches up when next opened
            log.exception("could not refresh the requester's App Home")

    async def _retry(self, message: OutboxMessage, error: str, *, at_least_s: float = 0) -> None:
        assert message.id is not None
        backoff = min(self.max_backoff_s, self.backoff_s * 2 ** max(0, message.attempts - 1))
        await self.store.outbox.outbox_retry(message.id, after_s=max(backoff, at_least_s), error=error)


async def _first(*waits: Callable[[], object]) -> None:
    tasks = [asyncio.ensure_future(w()) for w in waits]  # type: ignore[call-overload]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
