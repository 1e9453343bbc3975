"""What the engine says to people, and how it is said.

The engine never talks to people directly: every message (status, waiting notices, questions,
approval prompts, results, exceptions) is an outbox row written in the transaction that makes it
necessary (workers.store.outbox), and one deliverer per process says it through a
`ProgressReporter`. The Slack front door implements the reporter (one status message per order
updated in place, the rest posted once per idempotency key).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from workers.budget import micro_to_usd
from workers.models import WorkOrderRow
from workers.states import WaitKind
from workers.workorder import Budget, WorkOrder

log = logging.getLogger(__name__)

ExceptionKind = Literal[
    "budget",  # a ceiling (USD, tokens, wall clock, tool or model calls) stopped the run
    "authority",  # the run kept asking for tools or domains its policy does not grant
    "crashed",  # the run died (lost its lease) more often than engine.max_attempts allows
    "provider",  # the model provider refused (key, billing, input) or every model failed
    "refusal",  # the model declined the work
    "stalled",  # the run stopped making progress (no deliverable within engine.max_steps)
    "quota",  # the order waited for team quota longer than engine.max_quota_wait_s
]


@dataclass(frozen=True)
class Spend:
    """Where an order stands against its budget."""

    spent_usd: float
    max_usd: float
    tokens: int
    max_tokens: int
    tool_calls: int
    max_tool_calls: int
    model_calls: int
    max_model_calls: int
    elapsed_s: float
    max_wall_clock_s: int

    @classmethod
    def of(cls, row: WorkOrderRow, *, elapsed_s: float | None = None) -> Spend:
        budget = Budget.model_validate(row.budget)
        return cls(
            spent_usd=micro_to_usd(row.spent_micro_usd),
            max_usd=budget.max_usd,
            tokens=row.spent_tokens,
            max_tokens=budget.max_tokens,
            tool_calls=row.tool_calls,
            max_tool_calls=budget.max_tool_calls,
            model_calls=row.model_calls,
            max_model_calls=budget.max_model_calls,
            elapsed_s=row.elapsed_ms / 1000 if elapsed_s is None else elapsed_s,
            max_wall_clock_s=budget.max_wall_clock_s,
        )

    def describe(self) -> str:
        """e.g. "$0.12 of $2.00 · 1 min 5 s of 15 min · 4 of 40 tool calls"."""
        return (
            f"${self.spent_usd:.2f} of ${self.max_usd:.2f} · "
            f"{_duration(self.elapsed_s)} of {_duration(self.max_wall_clock_s)} · "
            f"{self.tool_calls} of {self.max_tool_calls} tool calls"
        )


@dataclass(frozen=True)
class HeldBack:
    """Why a queued order may not start yet (the store decides, this says it in words)."""

    reason: Literal["team_quota", "user_runs"]
    team: str = ""
    used_micro_usd: int = 0
    quota_micro_usd: int = 0
    requester: str = ""
    running: int = 0
    limit: int = 0

    @classmethod
    def team_quota(cls, team: str, *, used_micro_usd: int, quota_micro_usd: int) -> HeldBack:
        return cls(
            "team_quota", team=team, used_micro_usd=used_micro_usd, quota_micro_usd=quota_micro_usd
        )

    @classmethod
    def user_runs(cls, requester: str, *, running: int, limit: int) -> HeldBack:
        return cls("user_runs", requester=requester, running=running, limit=limit)

    @property
    def kind(self) -> WaitKind:
        return WaitKind.QUOTA if self.reason == "team_quota" else WaitKind.SLOT

    def describe(self) -> str:
        if self.reason == "team_quota":
            return (
                f"waiting for team quota: team {self.team} has used "
                f"${micro_to_usd(self.used_micro_usd):.2f} of its "
                f"${micro_to_usd(self.quota_micro_usd):.2f} weekly quota"
            )
        return (
            f"waiting for a free slot: the requester already has {self.running} "
            f"run{'s' if self.running != 1 else ''} going (limit {self.limit})"
        )


def crashed_message(lost: int, owner: str | None) -> str:
    """Why an order whose worker kept dying is in exception."""
    return (
        f"the run stopped responding {lost} time{'s' if lost != 1 else ''} (last worker: {owner})"
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


class StatusStep(str):
    """A status step as the outbox keeps it: `text` (which may hold a model's or a page's
    words), `person` (the user "{person}" in it names) and `by` (who made the change: "{by}" in
    the text, else a "(by ...)" after it). As a plain string it reads with both as raw mentions;
    the Slack reporter renders the parts itself so that only those two ids become live."""

    text: str
    by: str | None
    person: str | None

    def __new__(cls, text: str, *, by: str | None = None, person: str | None = None) -> StatusStep:
        step = super().__new__(cls, render_step(text, by=by, person=person, mention=_raw))
        step.text, step.by, step.person = text, by, person
        return step


def render_step(
    text: str, *, by: str | None, person: str | None, mention: Callable[[str], str]
) -> str:
    """`text` with "{person}" and "{by}" replaced by `mention` of those ids (a `by` the text
    does not place goes after it). Only those exact placeholders are touched."""
    if person:
        text = text.replace("{person}", mention(person))
    if by:
        text = text.replace("{by}", mention(by)) if "{by}" in text else f"{text} (by {mention(by)})"
    return text


def _raw(user: str) -> str:
    return f"<@{user}>"


@dataclass(frozen=True)
class RunResult:
    """A submitted deliverable, as the run handed it in."""

    content: str
    summary: str
    key: str
    """Idempotency key, e.g. 'WO-42:result:7' (7 is the stored deliverable's id)."""
    verdicts: list[dict[str, Any]] | None = None
    """Automatic check per criterion ({"criterion", "passed", "reason"}); None if not checked."""
    note: str = ""
    """Anything the reviewer should know about the checks (e.g. why they did not run)."""
    spend: Spend | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    """Files handed in with it: {"id", "position", "name", "mimetype", "size", "sha256"}."""


@dataclass(frozen=True)
class ReviewDecision:
    """A reviewer's decision on one deliverable, as its prompt shows it."""

    deliverable_id: int
    decision: str  # approve, reject, changes
    actor: str
    at: datetime
    feedback: str = ""
    self_approved: bool = False


@dataclass(frozen=True)
class ExceptionDecision:
    """A person's Extend, Retry or Cancel on an exception notice, as the notice shows it: the
    notice as it was posted (`kind`, `message`, `spend`: the spend before the action), without
    its buttons, and who did what."""

    key: str
    """The notice's idempotency key (e.g. 'WO-42:exception:3')."""
    kind: ExceptionKind
    message: str
    spend: Spend
    action: Literal["extend", "retry", "cancel"]
    actor: str
    budget: Budget | None = None
    """The envelope an Extend set."""


CardNote = Literal["started", "cancelled", "decided"]
"""What a person did to an order that its card says in a line of its own (with who did it)."""


@dataclass(frozen=True)
class DomainRequest:
    """A run wants to read a page outside its allowed domains (`reason` is the model's words)."""

    approval_id: int
    host: str
    url: str
    reason: str
    approvers: tuple[str, ...] = ()
    """Whom the prompt asks (the policy's approvers when the request was made)."""


@dataclass(frozen=True)
class ApprovalRequest:
    """A tool call waiting for a person's yes (or answered): what the prompt shows. `kind` is
    'tool' (the policy says ask) or 'domain' (web_fetch outside the allowlist: `host`, `url`).
    `arguments` is the call's canonical JSON, capped; the digest and length cover all of it;
    every text here but the ids comes from the model or a server and is shown inert."""

    approval_id: int
    kind: str
    tool: str
    server: str | None
    arguments: str
    arguments_sha256: str
    arguments_chars: int
    reason: str
    host: str = ""
    url: str = ""
    decision: str | None = None
    decided_by: str | None = None
    approvers: tuple[str, ...] = ()
    """Whom the prompt asks (the policy's approvers when the request was made)."""

    @property
    def tool_name(self) -> str:
        """As a policy names it: `server.tool`, or the built-in's name."""
        return f"{self.server}.{self.tool}" if self.server else self.tool

    @classmethod
    def of(cls, approval: Any, approvers: Sequence[str] = ()) -> ApprovalRequest:
        """From a stored `ToolApproval` row."""
        return cls(
            approvers=tuple(approvers),
            approval_id=approval.id,
            kind=approval.kind,
            tool=approval.tool,
            server=approval.server,
            arguments=approval.arguments,
            arguments_sha256=approval.arguments_sha256,
            arguments_chars=approval.arguments_chars,
            reason=approval.reason,
            host=approval.host,
            url=approval.url,
            decision=approval.decision,
            decided_by=approval.decided_by,
        )


class ProgressReporter(Protocol):
    """What the engine says about an order. Implementations must be idempotent per `key`."""

    async def status(self, order: WorkOrder, step: str, spend: Spend) -> None:
        """Update the order's single status message in place (state is `order.status`)."""
        ...

    async def waiting(self, order: WorkOrder, reason: str) -> None:
        """A queued order is being held back (quota, per-user limit, provider back-off)."""
        ...

    async def question(self, order: WorkOrder, text: str, *, key: str) -> None:
        """Ask the requester in the thread; their reply resumes the run."""
        ...

    async def domain_request(self, order: WorkOrder, request: DomainRequest, *, key: str) -> None:
        """Ask the requester (and escalation contact) whether the run may read a domain outside
        its allowlist: allow once, allow for the order, or deny. The answer resumes the run."""
        ...

    async def approval_request(
        self, order: WorkOrder, request: ApprovalRequest, *, key: str
    ) -> None:
        """Ask the policy's approvers whether the run may make a tool call: allow once, allow
        the tool for the order, or deny. The answer resumes the run."""
        ...

    async def approval_decided(
        self, order: WorkOrder, request: ApprovalRequest, *, key: str
    ) -> None:
        """Show on the prompt posted under `key` (a tool call's or a domain's) who answered."""
        ...

    async def result(self, order: WorkOrder, result: RunResult) -> None:
        """The run submitted its deliverable."""
        ...

    async def decided(self, order: WorkOrder, decision: ReviewDecision) -> None:
        """A reviewer decided: show it on the review prompt (whose buttons go)."""
        ...

    async def exception_decided(self, order: WorkOrder, decision: ExceptionDecision) -> None:
        """Someone pressed Extend, Retry or Cancel: show it on the exception notice (whose
        buttons go)."""
        ...

    async def card_note(self, order: WorkOrder, note: CardNote, *, actor: str) -> None:
        """Someone started or cancelled the order: redraw its card (as the order stands now)
        with a line saying who."""
        ...

    async def notice(self, order: WorkOrder, text: str, *, key: str, purpose: str) -> None:
        """A one-off note in the thread (reminders, escalations, quiet orders, added reviews);
        `text` is composed by Delegate from ids and its own words."""
        ...

    async def exception(
        self, order: WorkOrder, kind: ExceptionKind, message: str, spend: Spend, *, key: str
    ) -> None:
        """The run stopped and needs a person: what happened, in plain words."""
        ...
