"""The one Slack Web API client every part of the bot uses.

slack_sdk's retry handlers already do what we need: honour Retry-After on 429, back off on
500/503 and on dropped connections. We configure them once here rather than hand-writing retries.
"""

from __future__ import annotations

from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.web.async_client import AsyncWebClient

from workers.config import Settings

RATE_LIMIT_RETRIES = 3
TRANSIENT_RETRIES = 3


def make_slack_client(settings: Settings, *, backoff_factor_s: float = 0.5) -> AsyncWebClient:
    """A Web API client on `SLACK_API_URL` that survives rate limits and transient failures."""
    backoff = BackoffRetryIntervalCalculator(backoff_factor=backoff_factor_s)
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    return AsyncWebClient(
        token=token,
        base_url=settings.slack_api_url,
        timeout=15,
        retry_handlers=[
            AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES),
            AsyncServerErrorRetryHandler(
                max_retry_count=TRANSIENT_RETRIES, interval_calculator=backoff
            ),
            AsyncConnectionErrorRetryHandler(
                max_retry_count=TRANSIENT_RETRIES, interval_calculator=backoff
            ),
        ],
    )
