"""The whole pipeline in one process: the bot behind its HTTP surface and a worker pool, talking
to the fake Slack and model servers, driven through signed requests like a person in Slack."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from bot.attachments import SlackFiles
from bot.cards import START_ACTION
from bot.ids import APPROVE_ACTION, CHANGES_ACTION, REJECT_ACTION, review_value
from bot.slack_client import make_slack_client
from tests.fakes.anthropic import FakeAnthropic, Reply
from tests.fakes.openai import FakeOpenAI
from tests.fakes.openai import Reply as OpenAIReply
from tests.fakes.slack import FakeSlack
from tests.support.bot import RunningBot, running_bot
from tests.support.intake import draft
from tests.support.settings import FAST_ENGINE
from tests.support.waiting import DEADLINE_S, eventually
from workers.config import Settings
from workers.runtime import run_worker
from workers.states import EDITABLE
from workers.store import Store
from workers.tools import ToolRegistry
from workers.workorder import Status

REVIEW_ACTIONS = (APPROVE_ACTION, CHANGES_ACTION, REJECT_ACTION)


@dataclass
class Pipeline:
    bot: RunningBot
    slack: FakeSlack
    anthropic: FakeAnthropic
    openai: FakeOpenAI

    async def order_started(
        self,
        *execute: Reply,
        reviewers: str = "<@U7> reviews",
        budget: dict[str, Any] | None = None,
        **draft_fields: Any,
    ) -> str:
        """Mention -> card -> (script the run, adjust the budget) -> Start; returns the order id."""
        self.anthropic.script(draft(reviewers=["U7"] if "U7" in reviewers else [], **draft_fields))
        mention = self.bot.sender.app_mention(
            f"<@UBOT> competitor pricing table, {reviewers}", channel="C1"
        )
        await self.bot.sender.event(mention)
        await self.slack.wait_until(
            lambda: any(
                START_ACTION in json.dumps(c.args.get("blocks") or [])
                for c in self.slack.calls_to("chat.postMessage")
            )
        )
        [order] = await self.bot.store.orders.list_orders()
        assert order.id
        if budget:
            await self.bot.store.orders.update_order(
                order.id,
                actor="U1",
                expected=EDITABLE,
                budget=order.budget.model_copy(update=budget),
            )
        self.anthropic.script(*execute)
        await self.click(START_ACTION, order.id, "U1")
        return order.id

    async def click(
        self, action_id: str, value: str, user: str, *, message: dict[str, Any] | None = None
    ) -> None:
        """Click a button on the latest message that has it (or on `message`), as Slack would
        send it: with the button's own value (e.g. 'WO-1:v3') when the message has the button
        for the order `value` names, else `value`."""
        payload = await self.click_payload(action_id, value, user, message=message)
        status, _ = await self.bot.sender.action(payload)
        assert status == 200

    async def click_payload(
        self, action_id: str, value: str, user: str, *, message: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The `block_actions` payload `click` sends (see there), without sending it."""
        if message is None:
            if action_id in REVIEW_ACTIONS:
                # A reviewer clicks the prompt for the latest deliverable, once it is posted
                # (a moment after the state changes).
                [*_, latest] = await self.bot.store.runs.deliverables(value)
                current = review_value(value, latest.id)
                await self.slack.wait_until(
                    lambda: any(
                        button_value(c.args, action_id) == current
                        for c in self.slack.calls_to("chat.postMessage")
                    ),
                    within=DEADLINE_S,
                )
            carrying = [
                c
                for c in self.slack.calls_to("chat.postMessage")
                if action_id in json.dumps(c.args.get("blocks") or [])
            ]
            if carrying:
                message = {"ts": carrying[-1].response["ts"], "blocks": carrying[-1].args["blocks"]}
        shown = button_value(message, action_id) if message is not None else None
        if shown is not None and shown.partition(":")[0] == value.partition(":")[0]:
            value = shown
        payload = self.bot.sender.block_action(
            action_id,
            value,
            user_id=user,
            channel_id="C1",
            message_ts=(message or {}).get("ts", "1.1"),
        )
        if message is not None:
            payload["message"] = {**payload.get("message", {}), **message}
        return payload

    async def status_of(self, order_id: str, status: Status, within: float = DEADLINE_S) -> None:
        async def reached() -> bool:
            return (await self.bot.store.orders.get_order(order_id)).status is status

        await eventually(reached, timeout_s=within)

    async def post(self, needle: str, within: float = DEADLINE_S) -> dict[str, Any]:
        """The latest message posted containing `needle`, waiting for it to arrive."""
        await self.slack.wait_until(lambda: bool(self.posts_with(needle)), within=within)
        return self.posts_with(needle)[-1]

    async def update(self, needle: str, within: float = DEADLINE_S) -> dict[str, Any]:
        await self.slack.wait_until(lambda: bool(self.updates_with(needle)), within=within)
        return self.updates_with(needle)[-1]

    async def drained(self) -> None:
        """Wait until the outbox holds nothing undelivered (every message owed has been sent)."""

        async def empty() -> bool:
            return not await self.bot.store.outbox.undelivered()

        await eventually(empty, timeout_s=DEADLINE_S)

    async def shown(self, needle: str, within: float = DEADLINE_S) -> dict[str, Any]:
        """The latest message posted or edited to contain `needle` (a status message is
        posted once and then edited in place), waiting for it."""
        await self.slack.wait_until(
            lambda: bool(self.posts_with(needle) or self.updates_with(needle)), within=within
        )
        return (self.updates_with(needle) or self.posts_with(needle))[-1]

    def posts_with(self, needle: str) -> list[dict[str, Any]]:
        return [
            c.args
            for c in self.slack.calls_to("chat.postMessage")
            if needle
            in c.args.get("text", "") + json.dumps(c.args.get("blocks") or [], ensure_ascii=False)
        ]

    def updates_with(self, needle: str) -> list[dict[str, Any]]:
        return [
            c.args
            for c in self.slack.calls_to("chat.update")
            if needle in json.dumps(c.args.get("blocks") or [], ensure_ascii=False)
        ]


def button_value(message: dict[str, Any], action_id: str) -> str | None:
    """The value of the button `action_id` on a posted message, if it has one."""
    for block in message.get("blocks") or []:
        for element in block.get("elements") or []:
            if isinstance(element, dict) and element.get("action_id") == action_id:
                return str(element.get("value"))
    return None


PipelineFactory = Callable[..., AbstractAsyncContextManager[Pipeline]]
"""`async with pipeline(**overrides) as p`: `pipeline_for` on the test's store and fakes."""


@pytest.fixture
def pipeline(
    store: Store,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    settings_factory: Callable[..., Any],
) -> PipelineFactory:
    return functools.partial(
        pipeline_for, store, fake_slack, fake_anthropic, fake_openai, settings_factory
    )


@asynccontextmanager
async def pipeline_for(
    store: Store,
    fake_slack: FakeSlack,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    settings_factory: Callable[..., Any],
    tools: Callable[[Settings], ToolRegistry] | None = None,
    tool_settings: dict[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[Pipeline]:
    """The bot serving Slack and a worker pool running orders, on one store and the fakes;
    `tools` builds the worker's tool registry from the settings (default: the configured one),
    `tool_settings` is the settings' `tools` section."""
    overrides["engine"] = {**FAST_ENGINE, **overrides.get("engine", {})}
    if tool_settings is not None:
        overrides["tools"] = tool_settings
    settings = settings_factory(
        database_url=str(store.engine.url.render_as_string(hide_password=False)),
        **overrides,
    )
    async with running_bot(settings, store=store, fake_slack=fake_slack) as bot:
        stop = asyncio.Event()
        worker = asyncio.create_task(
            run_worker(
                bot.settings,
                concurrency=2,
                store=store,
                tools=tools(bot.settings) if tools else None,
                stop=stop,
                handle_signals=False,
                files=SlackFiles(make_slack_client(bot.settings, backoff_factor_s=0.01)),
            )
        )
        try:
            yield Pipeline(bot, fake_slack, fake_anthropic, fake_openai)
        finally:
            stop.set()
            await asyncio.wait_for(worker, 20)


def verdicts(*passed: bool) -> OpenAIReply:
    """The verifier's answer on the verify route (OpenAI first in the default routing)."""
    return OpenAIReply.tool(
        "record_verdicts",
        {
            "verdicts": [
                {"index": i, "passed": p, "reason": "ok" if p else "no source for Globex"}
                for i, p in enumerate(passed, 1)
            ]
        },
    )
