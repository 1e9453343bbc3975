"""Helpers for the engine's tests: settings pointed at the fakes, a recording ProgressReporter,
and a harness that creates, queues, claims and runs orders."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI

from tests.conftest import Database
from tests.factories import make_order
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from workers import queue
from workers.agent import Agent, Outcome, RunControl
from workers.config import Settings, load_settings
from workers.progress import ExceptionKind, RunResult, Spend
from workers.providers import ModelRouter
from workers.store import Store
from workers.tools import ToolRegistry, load_tools
from workers.workorder import Budget, Status, WorkOrder

FAST_ENGINE: dict[str, Any] = {
    "lease_ttl_s": 2,
    "heartbeat_s": 1,
    "max_attempts": 3,
    "status_update_interval_s": 0,
    "poll_interval_s": 0.05,
    "cancel_poll_s": 0.1,
    "shutdown_grace_s": 2,
    "max_output_tokens": 1024,
    "min_output_tokens": 16,
}

POLICIES: dict[str, Any] = {
    "default": {
        "description": "Work from the thread only: no web access.",
        "tools": ["read_thread", "ask_requester", "submit_deliverable"],
        "domains": [],
    },
    "research": {
        "description": "Read the public web.",
        "tools": ["read_thread", "ask_requester", "submit_deliverable", "web_fetch"],
        "domains": ["*"],
    },
}

_ROUTE = {"primary": "anthropic:claude-sonnet-4-6", "fallback": "openai:gpt-5-mini"}
# One route for every role and class (sources are deep-merged, so every key the shipped
# defaults have is overridden): Anthropic first, OpenAI as the fallback.
ROUTING: dict[str, Any] = {
    role: {key: _ROUTE for key in ("default", "quick", "standard", "deep")}
    for role in ("intake", "execute", "verify")
}


def single_route(model: str) -> dict[str, Any]:
    """Routing that sends every call to `model` ("provider:model"), without a fallback."""
    route = {"primary": model, "fallback": None}
    return {
        role: {key: route for key in ("default", "quick", "standard", "deep")}
        for role in ("intake", "execute", "verify")
    }


def engine_settings(
    database: Database,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    *,
    engine: dict[str, Any] | None = None,
    **overrides: Any,
) -> Settings:
    values: dict[str, Any] = {
        "database_url": database.url,
        "anthropic_api_key": fake_anthropic.api_key,
        "anthropic_base_url": fake_anthropic.base_url,
        "openai_api_key": fake_openai.api_key,
        "openai_base_url": fake_openai.base_url,
        "routing": ROUTING,
        "policies": POLICIES,
        "engine": {**FAST_ENGINE, **(engine or {})},
    }
    values.update(overrides)
    return load_settings(**values)


@dataclass
class RecordingReporter:
    """A real ProgressReporter that remembers what it was told, once per idempotency key."""

    statuses: list[tuple[str, str, str, Spend]] = field(default_factory=list)
    waits: list[tuple[str, str]] = field(default_factory=list)
    questions: dict[str, tuple[str, str]] = field(default_factory=dict)
    results: dict[str, tuple[str, RunResult]] = field(default_factory=dict)
    exceptions: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)

    async def status(self, order: WorkOrder, step: str, spend: Spend) -> None:
        self.statuses.append((order.id or "", order.status.value, step, spend))

    async def waiting(self, order: WorkOrder, reason: str) -> None:
        self.waits.append((order.id or "", reason))

    async def question(self, order: WorkOrder, text: str, *, key: str) -> None:
        self._once(self.questions, key, (order.id or "", text))

    async def result(self, order: WorkOrder, result: RunResult) -> None:
        self._once(self.results, result.key, (order.id or "", result))

    async def exception(
        self, order: WorkOrder, kind: ExceptionKind, message: str, spend: Spend, *, key: str
    ) -> None:
        self._once(self.exceptions, key, (order.id or "", kind, message))

    def _once(self, store: dict[str, Any], key: str, value: Any) -> None:
        if key in store:
            self.duplicates.append(key)
        store[key] = value

    def steps(self, order_id: str) -> list[str]:
        return [step for oid, _, step, _ in self.statuses if oid == order_id]


class Harness:
    """Everything one engine test needs, wired to the fakes and a migrated database."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        fake_anthropic: FakeAnthropic,
        fake_openai: FakeOpenAI,
        *,
        tools: ToolRegistry | None = None,
        max_retries: int = 1,
    ) -> None:
        self.settings = settings
        self.store = store
        self.anthropic = fake_anthropic
        self.openai = fake_openai
        self.reporter = RecordingReporter()
        self.router = ModelRouter(
            settings,
            store,
            anthropic=AsyncAnthropic(
                api_key=fake_anthropic.api_key,
                base_url=fake_anthropic.base_url,
                max_retries=max_retries,
            ),
            openai=AsyncOpenAI(
                api_key=fake_openai.api_key, base_url=fake_openai.base_url, max_retries=max_retries
            ),
        )
        self.tools = tools or load_tools(settings, use_entry_points=False)
        self.worker_id = "test-worker"

    def agent(self, worker_id: str | None = None) -> Agent:
        return Agent(
            settings=self.settings,
            store=self.store,
            router=self.router,
            tools=self.tools,
            reporter=self.reporter,
            worker_id=worker_id or self.worker_id,
        )

    async def order(self, *, start: bool = True, **fields: Any) -> WorkOrder:
        fields.setdefault(
            "budget",
            Budget(max_usd=2.0, max_tokens=200_000, max_wall_clock_s=120, max_tool_calls=20),
        )
        fields.setdefault("status", Status.AWAITING_CONFIRMATION)
        created = await self.store.create_order(make_order(**fields), actor="U1")
        if start:
            created = await queue.enqueue(self.store, self.settings, created.id or "", actor="U1")
        return created

    async def run_next(
        self, *, worker_id: str | None = None, control: RunControl | None = None
    ) -> Outcome | None:
        """Claim the next order and run it to the end of this attempt (no runtime around it)."""
        claim = await queue.claim(self.store, self.settings, worker_id or self.worker_id)
        for order, reason in claim.waiting:
            await self.reporter.waiting(order, reason)
        if claim.order is None or claim.attempt is None:
            return None
        return await self.agent(worker_id).run(
            claim.order, claim.attempt, elapsed_ms=claim.elapsed_ms, control=control
        )

    async def close(self) -> None:
        await self.router.close()


@pytest.fixture
async def harness(
    database: Database, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI
) -> AsyncIterator[Harness]:
    store = Store(database.engine())
    settings = engine_settings(database, fake_anthropic, fake_openai)
    h = Harness(settings, store, fake_anthropic, fake_openai)
    yield h
    await h.close()
    await store.close()


async def eventually(predicate: Any, *, timeout_s: float = 10.0, interval_s: float = 0.05) -> None:
    """Wait until `await predicate()` (or `predicate()`) is truthy."""
    async with asyncio.timeout(timeout_s):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(interval_s)


# Worker processes (crash and multi-process tests).

REPO = Path(__file__).resolve().parents[1]
_INHERITED_PREFIXES = ("DELEGATE_", "SLACK_", "ANTHROPIC_", "OPENAI_", "DATABASE_URL", "PGOPTIONS")


def worker_env(
    database: Database,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    *,
    engine: dict[str, Any] | None = None,
    slack_api_url: str | None = None,
) -> dict[str, str]:
    """Environment for `delegate worker`, pointed at this test's fakes and DB."""
    config = tmp_path / "delegate.yaml"
    config.write_text(
        yaml.safe_dump(
            {"engine": {**FAST_ENGINE, **(engine or {})}, "routing": ROUTING, "policies": POLICIES}
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_PREFIXES)}
    env |= {
        **database.env(),
        "DELEGATE_CONFIG": str(config),
        "ANTHROPIC_API_KEY": fake_anthropic.api_key,
        "ANTHROPIC_BASE_URL": fake_anthropic.base_url,
        "OPENAI_API_KEY": fake_openai.api_key,
        "OPENAI_BASE_URL": fake_openai.base_url,
        "PYTHONPATH": str(REPO),
    }
    if slack_api_url:
        env |= {"SLACK_BOT_TOKEN": "xoxb-test", "SLACK_API_URL": slack_api_url}
    return env


async def spawn_worker(
    env: dict[str, str], tmp_path: Path, *, worker_id: str, concurrency: int = 1
) -> asyncio.subprocess.Process:
    log = (tmp_path / f"{worker_id}.log").open("wb")
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "worker",
        "--worker-id",
        worker_id,
        "--concurrency",
        str(concurrency),
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def stop_worker(process: asyncio.subprocess.Process, *, timeout_s: float = 15) -> int:
    """SIGTERM, and wait for the graceful exit."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(process.wait(), timeout_s)
