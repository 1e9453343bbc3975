"""The one Slack Web API client every part of the bot uses.

slack_sdk's retry handlers already do most of what we need: back off on 500/503 and on dropped
connections. We configure them once here rather than hand-writing retries. For 429s the handler
goes through the process's rate gate (bot.rate_gate), so that a Retry-After holds the method for
every caller (and, through the store, every process), not only the request that was refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.blocks import MESSAGE_TEXT_MAX, truncate
from bot.rate_gate import DEFAULT_RETRY_AFTER_S, RateGate, SharedHolds
from workers.config import Settings
from workers.logs import scrub_secrets, secrets_to_scrub
from workers.telemetry import SLACK_CALLS, SLACK_ERRORS, SLACK_RATE_LIMITED

log = logging.getLogger(__name__)

RATE_LIMIT_RETRIES = 3
TRANSIENT_RETRIES = 3
# Slack refuses a whole message whose text is over 40,000 characters (`msg_too_long`).
_MESSAGE_METHODS = frozenset({"chat.postMessage", "chat.update", "chat.postEphemeral"})

AUTH_ERRORS = frozenset(
    {"invalid_auth", "token_revoked", "account_inactive", "not_authed", "token_expired"}
)
"""Slack refuses the bot token itself: nothing can be done with it until an admin fixes it."""

_TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "service_unavailable", "request_timeout", "fatal_error"}
)


def is_transient(exc: SlackApiError) -> bool:
    """Whether Slack may well accept the same call later (rate limit, outage)."""
    status = getattr(exc.response, "status_code", 200)
    return status >= 500 or status == 429 or exc.response.get("error") in _TRANSIENT_ERRORS


# Called with the app token, not the bot token: its refusals are the Socket Mode runner's.
_APP_TOKEN_METHODS = frozenset({"apps.connections.open"})


class InstrumentedWebClient(AsyncWebClient):
    """Counts every Web API call by method and outcome for `/metrics`, and removes the
    deployment's secrets from what it sends (model output and thread text may quote them)."""

    secrets: Sequence[str] = ()
    on_token_refused: Callable[[str], Awaitable[None]] | None = None
    """Told Slack's error whenever a call is refused for the bot token (bot.token_watch)."""
    gate: RateGate | None = None
    """Waited on before each call: methods held after a 429, and Slack's per-method budgets."""

    async def api_call(self, api_method: str, **kwargs: Any) -> AsyncSlackResponse:
        if self.gate is not None:
            await self.gate.before_call(api_method, _channel_of(kwargs))
        if self.secrets:
            for part in ("json", "params", "data"):
                fields = kwargs.get(part)
                if isinstance(fields, dict):
                    # `token` is how the SDK sends the app token (apps.connections.open).
                    kwargs[part] = {
                        k: v if k == "token" else scrub_secrets(v, self.secrets)
                        for k, v in fields.items()
                    }
        payload = kwargs.get("json")
        if api_method in _MESSAGE_METHODS and isinstance(payload, dict):
            text = payload.get("text")
            if isinstance(text, str) and len(text) > MESSAGE_TEXT_MAX:
                # The last line of defence: cut with a visible marker rather than lose it all.
                kwargs["json"] = {**payload, "text": truncate(text, MESSAGE_TEXT_MAX)}
        try:
            response = await super().api_call(api_method, **kwargs)
        except SlackApiError as exc:
            error = str(exc.response.get("error") or "unknown")
            SLACK_CALLS.labels(api_method, "error").inc()
            SLACK_ERRORS.labels(api_method, error).inc()
            hook = self.on_token_refused
            if hook is not None and error in AUTH_ERRORS and api_method not in _APP_TOKEN_METHODS:
                try:
                    await hook(error)
                except Exception as hook_error:  # the caller still learns what Slack said
                    log.warning("could not record the refused bot token (%r)", hook_error)
            raise
        except Exception:
            SLACK_CALLS.labels(api_method, "error").inc()
            SLACK_ERRORS.labels(api_method, "unreachable").inc()
            raise
        SLACK_CALLS.labels(api_method, "ok").inc()
        return response


def _channel_of(kwargs: dict[str, Any]) -> str | None:
    """The channel a call is about, wherever the SDK put its arguments."""
    for part in ("json", "data", "params"):
        fields = kwargs.get(part)
        if isinstance(fields, dict) and isinstance(fields.get("channel"), str):
            return str(fields["channel"])
    return None


def _method_of(url: str) -> str | None:
    """`chat.update` for .../api/chat.update; None for other URLs (file uploads)."""
    _, found, method = urlsplit(url).path.partition("/api/")
    return method if found and method and "/" not in method else None


def _retry_after(response: HttpResponse) -> float | None:
    for name, value in response.headers.items():
        if name.lower() == "retry-after":
            first = value[0] if isinstance(value, list | tuple) else value
            try:
                return float(first)
            except (TypeError, ValueError):
                return None
    return None


class _GatedRateLimitHandler(AsyncRetryHandler):
    """Slack's 429 handling through the rate gate: every 429 holds its method for Retry-After
    (counted for `/metrics`), and the refused request waits on the gate like any other call."""

    def __init__(self, gate: RateGate, *, max_retry_count: int) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.gate = gate

    async def can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        # Before the retry count is checked: the last 429 holds the method as much as the first.
        if response is not None and response.status_code == 429:
            method = _method_of(request.url)
            SLACK_RATE_LIMITED.labels(method or urlsplit(request.url).path.rsplit("/", 1)[-1]).inc()
            if method is not None:
                await self.gate.rate_limited(method, _retry_after(response))
        return await super().can_retry_async(
            state=state, request=request, response=response, error=error
        )

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and response.status_code == 429

    async def prepare_for_next_attempt_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        state.next_attempt_requested = True
        method = _method_of(request.url)
        if method is not None:
            await self.gate.wait(method)
        else:
            wait = _retry_after(response) if response is not None else None
            await asyncio.sleep(DEFAULT_RETRY_AFTER_S if wait is None else wait)
        state.increment_current_attempt()


# Methods that create something: a 5xx or a dropped connection may come after Slack did it, so
# a blind retry can post twice.
NOT_REPEATABLE = frozenset(
    {
        "chat.postMessage",
        "files.completeUploadExternal",
        "canvases.create",
        "chat.scheduleMessage",
        # A second start is a second stream; startStream leaves nothing to look for, so the
        # live plan falls back to the status message instead (bot.live_plan).
        "chat.startStream",
    }
)

LOOKS_BEFORE_REPEATING: ContextVar[bool] = ContextVar("looks_before_repeating", default=False)
"""Set by the outbox's sender around its posts: it marks a post whose outcome is unknown and
looks for it before trying again, so the client must not repeat it blindly meanwhile. Replies
outside the outbox (the intake dialogue's) keep the client's retries."""


@contextmanager
def looking_before_repeating() -> Iterator[None]:
    token = LOOKS_BEFORE_REPEATING.set(True)
    try:
        yield
    finally:
        LOOKS_BEFORE_REPEATING.reset(token)


class _RepeatableOnly:
    """Mixin: under `looking_before_repeating`, no transient failure of a method that creates
    something is retried by the client."""

    async def can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if LOOKS_BEFORE_REPEATING.get() and _method_of(request.url) in NOT_REPEATABLE:
            return False
        return await super().can_retry_async(  # type: ignore[misc]
            state=state, request=request, response=response, error=error
        )


class _ServerErrorRetries(_RepeatableOnly, AsyncServerErrorRetryHandler):
    pass


class _ConnectionErrorRetries(_RepeatableOnly, AsyncConnectionErrorRetryHandler):
    pass


def make_slack_client(
    settings: Settings,
    *,
    backoff_factor_s: float = 0.5,
    shared_holds: SharedHolds | None = None,
) -> InstrumentedWebClient:
    """A Web API client on `SLACK_API_URL` that survives rate limits and transient failures.

    `shared_holds` (the store) shares 429s with the other processes on the same database."""
    gate = RateGate(shared=shared_holds, budget_scale=settings.slack.rate_budget_scale)
    backoff = BackoffRetryIntervalCalculator(backoff_factor=backoff_factor_s)
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    client = InstrumentedWebClient(
        token=token,
        base_url=settings.slack_api_url,
        timeout=15,
        retry_handlers=[
            _GatedRateLimitHandler(gate, max_retry_count=RATE_LIMIT_RETRIES),
            _ServerErrorRetries(max_retry_count=TRANSIENT_RETRIES, interval_calculator=backoff),
            _ConnectionErrorRetries(
                max_retry_count=TRANSIENT_RETRIES, interval_calculator=backoff
            ),
        ],
    )
    client.secrets = secrets_to_scrub(settings.secret_values())
    client.gate = gate
    return client
