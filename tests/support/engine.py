"""The engine harness: a recording ProgressReporter, and a harness that creates, queues, claims
and runs orders against the fake model servers (the `harness` fixture)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.support.databases import Database
from tests.support.factories import make_order
from tests.support.settings import engine_settings
from workers import queue
from workers.agent import Agent, Outcome, RunControl
from workers.config import Settings
from workers.delivery import drain_outbox
from workers.progress import (
    ApprovalRequest,
    CardNote,
    DomainRequest,
    ExceptionDecision,
    ExceptionKind,
    ReviewDecision,
    RunResult,
    Spend,
)
from workers.providers import ModelRouter
from workers.store import Store
from workers.tools import ToolRegistry, load_tools
from workers.workorder import Budget, Status, WorkOrder


@dataclass
class RecordingReporter:
    """A real ProgressReporter that remembers what it was told, once per idempotency key."""

    statuses: list[tuple[str, str, str, Spend]] = field(default_factory=list)
    waits: list[tuple[str, str]] = field(default_factory=list)
    questions: dict[str, tuple[str, str]] = field(default_factory=dict)
    domain_requests: dict[str, tuple[str, DomainRequest]] = field(default_factory=dict)
    approval_requests: dict[str, tuple[str, ApprovalRequest]] = field(default_factory=dict)
    approvals_decided: dict[str, tuple[str, ApprovalRequest]] = field(default_factory=dict)
    results: dict[str, tuple[str, RunResult]] = field(default_factory=dict)
    exceptions: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    decisions: list[tuple[str, ReviewDecision]] = field(default_factory=list)
    exceptions_decided: list[tuple[str, ExceptionDecision]] = field(default_factory=list)
    card_notes: list[tuple[str, str, str]] = field(default_factory=list)
    notices: dict[str, tuple[str, str]] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)

    async def status(self, order: WorkOrder, step: str, spend: Spend) -> None:
        self.statuses.append((order.id or "", order.status.value, step, spend))

    async def waiting(self, order: WorkOrder, reason: str) -> None:
        self.waits.append((order.id or "", reason))

    async def question(self, order: WorkOrder, text: str, *, key: str) -> None:
        self._once(self.questions, key, (order.id or "", text))

    async def domain_request(self, order: WorkOrder, request: DomainRequest, *, key: str) -> None:
        self._once(self.domain_requests, key, (order.id or "", request))

    async def approval_request(
        self, order: WorkOrder, request: ApprovalRequest, *, key: str
    ) -> None:
        self._once(self.approval_requests, key, (order.id or "", request))

    async def approval_decided(
        self, order: WorkOrder, request: ApprovalRequest, *, key: str
    ) -> None:
        self._once(self.approvals_decided, key, (order.id or "", request))

    async def result(self, order: WorkOrder, result: RunResult) -> None:
        self._once(self.results, result.key, (order.id or "", result))

    async def decided(self, order: WorkOrder, decision: ReviewDecision) -> None:
        self.decisions.append((order.id or "", decision))

    async def exception_decided(self, order: WorkOrder, decision: ExceptionDecision) -> None:
        self.exceptions_decided.append((order.id or "", decision))

    async def card_note(self, order: WorkOrder, note: CardNote, *, actor: str) -> None:
        self.card_notes.append((order.id or "", note, actor))

    async def notice(self, order: WorkOrder, text: str, *, key: str, purpose: str) -> None:
        self._once(self.notices, key, (order.id or "", text))

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
            worker_id=worker_id or self.worker_id,
        )

    async def order(self, *, start: bool = True, **fields: Any) -> WorkOrder:
        fields.setdefault(
            "budget",
            Budget(max_usd=2.0, max_tokens=200_000, max_wall_clock_s=120, max_tool_calls=20),
        )
        fields.setdefault("status", Status.AWAITING_CONFIRMATION)
        created = await self.store.orders.create_order(make_order(**fields), actor="U1")
        if start:
            created = await queue.enqueue(self.store, self.settings, created.id or "", actor="U1")
        return created

    async def run_next(
        self, *, worker_id: str | None = None, control: RunControl | None = None
    ) -> Outcome | None:
        """Claim the next order and run it to the end of this attempt (no runtime around it)."""
        claim = await queue.claim(self.store, self.settings, worker_id or self.worker_id)
        if claim.order is None or claim.attempt is None:
            await self.deliver()  # what the claim wrote (waiting notices, quota exceptions)
            return None
        outcome = await self.agent(worker_id).run(
            claim.order, claim.attempt, elapsed_ms=claim.elapsed_ms, control=control
        )
        await self.deliver()
        return outcome

    async def deliver(self) -> int:
        """Say what the run left in the durable outbox through the recording reporter."""
        return await drain_outbox(self.store, self.reporter)

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
