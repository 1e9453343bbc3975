"""A running Delegate bot (real Bolt app behind the real aiohttp server) for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from slack_bolt.async_app import AsyncApp

from bot.app import create_app
from bot.delivery import Deliverer
from bot.reporter import SlackReporter
from bot.server import build_web_app, start_site
from bot.slack_client import make_slack_client
from tests.fakes.slack import FakeSlack, SlackSender
from workers.config import Settings
from workers.providers import ModelRouter
from workers.store import Store


class RunningBot:
    def __init__(
        self,
        *,
        url: str,
        store: Store,
        sender: SlackSender,
        settings: Settings,
        bolt: AsyncApp | None = None,
    ) -> None:
        self.url = url
        self.store = store
        self.sender = sender
        self.settings = settings
        self.bolt = bolt


@asynccontextmanager
async def running_bot(
    settings: Settings,
    *,
    store: Store,
    fake_slack: FakeSlack,
    deliver: bool = True,
    **_: Any,
) -> AsyncIterator[RunningBot]:
    """Serve the bot over HTTP on a free port, talking to `fake_slack`, with a `Deliverer`
    sending the outbox beside it as in `delegate run` (unless `deliver` is False)."""
    settings = settings.model_copy(update={"slack_api_url": fake_slack.api_url})
    client = make_slack_client(settings, backoff_factor_s=0.01)
    router = ModelRouter.from_settings(settings, store)
    bolt = create_app(settings, store=store, client=client, completer=router)
    runner: web.AppRunner = await start_site(
        build_web_app(
            store=store,
            bolt=bolt,
            signing_secret=settings.slack_signing_secret.get_secret_value()
            if settings.slack_signing_secret
            else None,
        ),
        host="127.0.0.1",
        port=0,
    )
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"
    secret = settings.slack_signing_secret
    assert secret is not None
    try:
        async with delivering(store, settings) if deliver else contextlib.nullcontext():
            yield RunningBot(
                url=url,
                store=store,
                sender=SlackSender(url, secret.get_secret_value()),
                settings=settings,
                bolt=bolt,
            )
    finally:
        await runner.cleanup()
        await router.close()


@asynccontextmanager
async def delivering(store: Store, settings: Settings) -> AsyncIterator[None]:
    """A `Deliverer` sending the outbox to `settings.slack_api_url`, as `delegate run` runs
    one beside the Slack app (quick polls and back-offs, for tests)."""
    stop = asyncio.Event()
    reporter = SlackReporter(
        store=store, client=make_slack_client(settings, backoff_factor_s=0.01), settings=settings
    )
    deliverer = Deliverer(store, reporter, poll_s=1.0, backoff_s=0.05).start(stop)
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(deliverer, 20)
