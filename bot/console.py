"""`delegate console`: the intake dialogue in a terminal, for trying Delegate without Slack.

It uses the configured providers and database like the Slack surface does, and reads plain lines
from standard input, so a script can drive it too.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import TextIO

from workers.config import Settings
from workers.intake import (
    ChatAnswer,
    Draft,
    IntakeEngine,
    IntakeUnavailable,
    Questions,
    RequesterContext,
    Turn,
)
from workers.models import IntakeSession
from workers.store import Store
from workers.workorder import Status, WorkOrder

YES = {"y", "yes", "go", "start"}
NO = {"n", "no", "cancel", "quit", "exit"}


def describe(order: WorkOrder, open_points: list[str]) -> str:
    lines = [
        f"Title:        {order.title}",
        f"Goal:         {order.goal}",
        f"Deliverable:  {order.deliverable}",
        "Criteria:",
        *(f"  [ ] {c}" for c in order.acceptance_criteria),
        f"Budget:       {order.budget.describe()}",
        f"Policy:       {order.authority_policy}",
        f"Reviewers:    {', '.join(order.verification.reviewers) or '(requester)'}",
        f"Deadline:     {order.deadline.isoformat() if order.deadline else '(none)'}",
    ]
    if open_points:
        lines += ["Open points:", *(f"  - {p}" for p in open_points)]
    return "\n".join(lines)


class Console:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        engine: IntakeEngine,
        user: str,
        tz: str = "UTC",
        read_line: Callable[[], Awaitable[str]] | None = None,
        out: TextIO = sys.stdout,
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.user = user
        self.tz = tz
        self.out = out
        self._read_line = read_line or (lambda: asyncio.to_thread(sys.stdin.readline))

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def ask(self, prompt: str) -> str | None:
        self.say(prompt)
        line = await self._read_line()
        return None if line == "" else line.strip()  # "" is end of input; "\n" is an empty answer

    async def run(self) -> str | None:
        """Hold the dialogue; return the confirmed order id, or None."""
        session, _ = await self.store.open_intake(
            channel="console", thread_ts=uuid.uuid4().hex, requester=self.user, surface="console"
        )
        request = await self.ask("What do you need done?")
        turns: list[Turn] = []
        while request is not None:
            if not request:
                request = await self.ask("Tell me what you need, or press Ctrl-D to leave.")
                continue
            turns.append(Turn("requester", request))
            ctx = RequesterContext(user_id=self.user, channel=None, tz=self.tz)
            try:
                outcome = await self.engine.step(turns, ctx, rounds_so_far=session.rounds)
            except IntakeUnavailable as exc:
                self.say(f"The language model is unavailable ({exc}). Try again later.")
                return None
            if isinstance(outcome, ChatAnswer):
                await self._save(session, turns, kind="chat", state="closed")
                self.say(outcome.text)
                return None
            if isinstance(outcome, Questions):
                session.rounds += 1
                text = "\n".join(f"{i}. {q}" for i, q in enumerate(outcome.questions, 1))
                turns.append(Turn("delegate", text))
                await self._save(session, turns)
                request = await self.ask(f"A few questions before I draft this:\n{text}")
                continue
            return await self._confirm(session, turns, outcome)
        self.say("No work order was confirmed.")
        return None

    async def _confirm(self, session: IntakeSession, turns: list[Turn], draft: Draft) -> str | None:
        self.say("Here is the work order I drafted:\n" + describe(draft.order, draft.open_points))
        while True:
            answer = await self.ask("Start it? [yes/no]")
            if answer is None or answer.lower() in NO:
                await self._save(session, turns, kind="delegation", state="closed")
                self.say("No work order was confirmed.")
                return None
            if answer.lower() in YES:
                break
        order = await self.store.create_order(draft.order, actor=self.user)
        assert order.id
        await self.store.transition(
            order.id, Status.AWAITING_CONFIRMATION, actor="intake", reason="draft proposed"
        )
        await self.store.transition(
            order.id, Status.QUEUED, actor=self.user, reason="confirmed in console"
        )
        session.order_id = int(order.id.removeprefix("WO-"))
        await self._save(session, turns, kind="delegation", state="confirmed")
        self.say(f"Confirmed {order.id}")
        return order.id

    async def _save(
        self,
        session: IntakeSession,
        turns: list[Turn],
        *,
        kind: str | None = None,
        state: str | None = None,
    ) -> None:
        session.transcript = [{"role": t.role, "text": t.text} for t in turns]
        if kind:
            session.kind = kind
        if state:
            session.state = state
        await self.store.save_intake(session)
