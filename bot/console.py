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

from bot.show import local_time
from workers.config import Settings
from workers.dialogue import IntakeDialogue, Limited, Unavailable, questions_text
from workers.intake import ChatAnswer, Draft, IntakeEngine, Questions
from workers.models import IntakeSession
from workers.states import IntakeKind
from workers.store import Store
from workers.workorder import WorkOrder

YES = {"y", "yes", "go", "start"}
NO = {"n", "no", "cancel", "quit", "exit"}


def describe(order: WorkOrder, open_points: list[str], *, tz: str = "UTC") -> str:
    lines = [
        f"Title:        {order.title}",
        f"Goal:         {order.goal}",
        f"Deliverable:  {order.deliverable}",
        "Criteria:",
        *(f"  [ ] {c}" for c in order.acceptance_criteria),
        f"Budget:       {order.budget.describe()}",
        f"Policy:       {order.authority_policy}",
        f"Reviewers:    {', '.join(order.verification.reviewers) or '(requester)'}",
        f"Deadline:     {local_time(order.deadline, tz)}",
    ]
    if open_points:
        lines += ["Open points:", *(f"  - {p}" for p in open_points)]
    return "\n".join(lines)


class Console:
    """The terminal adapter over `IntakeDialogue`."""

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
        self.dialogue = IntakeDialogue(settings, store=store, engine=engine)
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
        session = await self.dialogue.open(
            channel="console", thread_ts=uuid.uuid4().hex, requester=self.user, surface="console"
        )
        request = await self.ask("What do you need done?")
        while request is not None:
            if not request:
                request = await self.ask("Tell me what you need, or press Ctrl-D to leave.")
                continue
            outcome = await self.dialogue.step(session, request, channel=None, tz=self.tz)
            if isinstance(outcome, Limited):
                self.say(outcome.message)
                return None
            if isinstance(outcome, Unavailable):
                self.say(f"The language model is unavailable ({outcome.reason}). Try again later.")
                return None
            if isinstance(outcome, ChatAnswer):
                self.say(outcome.text)
                return None
            if isinstance(outcome, Questions):
                text = questions_text(outcome.questions)
                request = await self.ask(f"A few questions before I draft this:\n{text}")
                continue
            answer = await self._present(session, outcome)
            if answer is None or answer.lower() in NO:
                await self.dialogue.close(session, kind=IntakeKind.DELEGATION)
                break
            if answer.lower() in YES:
                return await self._confirm(session, outcome)
            request = answer  # anything else refines the draft, as a reply in a thread does
        self.say("No work order was confirmed.")
        return None

    async def _present(self, session: IntakeSession, draft: Draft) -> str | None:
        """Show the draft and ask for a decision: yes, no, or what to change (None: end of
        input)."""
        await self.dialogue.present(session, draft)
        self.say(
            "Here is the work order I drafted:\n"
            + describe(draft.order, draft.open_points, tz=self.tz)
        )
        answer = await self.ask("Start it? [yes/no, or say what to change]")
        while answer == "":
            answer = await self.ask("Start it? [yes/no, or say what to change]")
        return answer

    async def _confirm(self, session: IntakeSession, draft: Draft) -> str:
        order = await self.dialogue.propose(session, draft, actor=self.user)
        assert order is not None and order.id
        await self.dialogue.start(order.id, actor=self.user, reason="confirmed in console")
        # The id stays the last line, for scripts that drive the console.
        self.say(f"Follow it with: delegate show {order.id} --tz {self.tz}")
        self.say(f"Confirmed {order.id}")
        return order.id
