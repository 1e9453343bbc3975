"""The work order: what is being delegated, under which budget, authority and verification gate."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

ORDER_ID_RE = re.compile(r"^WO-(\d+)$")


class Status(StrEnum):
    DRAFTING = "drafting"
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    QUEUED = "queued"
    RUNNING = "running"
    WAITING_FOR_REQUESTER = "waiting_for_requester"
    VERIFYING = "verifying"
    AWAITING_REVIEW = "awaiting_review"
    CHANGES_REQUESTED = "changes_requested"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXCEPTION = "exception"
    CANCELLED = "cancelled"


class WorkloadClass(StrEnum):
    """How heavy a job is; selects the default budget, model route and queue priority."""

    QUICK = "quick"
    STANDARD = "standard"
    DEEP = "deep"


NonEmpty = Annotated[str, Field(min_length=1)]
# No budget goes above this; a deployment's own limit is `Settings.max_order_usd`.
MAX_BUDGET_USD = 10_000


class Budget(BaseModel):
    """The hard ceilings a run may not exceed."""

    model_config = ConfigDict(extra="forbid")

    max_usd: float = Field(gt=0, le=MAX_BUDGET_USD, description="Spend ceiling in US dollars.")
    max_tokens: int = Field(gt=0, description="Total tokens (input + output) across all calls.")
    max_wall_clock_s: int = Field(gt=0, description="Total elapsed time from start, in seconds.")
    max_tool_calls: int = Field(ge=0, description="Number of tool invocations.")
    max_model_calls: int = Field(default=50, gt=0, description="Number of model requests.")

    def describe(self) -> str:
        minutes = self.max_wall_clock_s / 60
        span = f"{minutes:g} min" if minutes >= 1 else f"{self.max_wall_clock_s} s"
        return f"${self.max_usd:.2f} · {span} · {self.max_tool_calls} tool calls"


class Verification(BaseModel):
    """The gate a deliverable passes before it counts as done."""

    model_config = ConfigDict(extra="forbid")

    automatic_checks: bool = True
    reviewers: list[str] = Field(default_factory=list, description="Slack user ids.")
    max_auto_revisions: int = Field(default=1, ge=0, le=5)


class WorkOrder(BaseModel):
    """A structured, budgeted, verifiable unit of delegated work."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, pattern=ORDER_ID_RE.pattern, description="e.g. WO-42")
    title: NonEmpty = Field(max_length=200)
    requester: NonEmpty = Field(description="Slack user id of the person delegating.")
    team: str = Field(default="default", description="Team the spend is charged to.")
    channel: str | None = Field(default=None, description="Slack channel id.")
    thread_ts: str | None = Field(default=None, description="Slack thread timestamp.")
    goal: NonEmpty
    context: str = ""
    deliverable: NonEmpty = Field(description="What form the result takes.")
    acceptance_criteria: list[NonEmpty] = Field(min_length=1)
    budget: Budget
    workload_class: WorkloadClass = WorkloadClass.STANDARD
    authority_policy: NonEmpty = "default"
    verification: Verification = Field(default_factory=Verification)
    escalation_contact: str | None = Field(default=None, description="Slack user id.")
    deadline: datetime | None = None
    status: Status = Status.DRAFTING
    self_approved: bool = Field(
        default=False, description="Approved by its requester rather than another reviewer."
    )

    @field_validator("acceptance_criteria")
    @classmethod
    def _criteria_are_distinct(cls, criteria: list[str]) -> list[str]:
        cleaned = [c.strip() for c in criteria]
        if any(not c for c in cleaned):
            raise ValueError("acceptance criteria must not be blank")
        return cleaned

    @field_validator("deadline")
    @classmethod
    def _deadline_is_aware(cls, deadline: datetime | None) -> datetime | None:
        if deadline is not None and deadline.tzinfo is None:
            raise ValueError("deadline must carry a time zone")
        return deadline


def format_order_id(number: int) -> str:
    return f"WO-{number}"


def parse_order_id(text: str) -> int:
    """`WO-42` (any case, surrounding spaces ignored) -> 42; ValueError otherwise."""
    match = ORDER_ID_RE.match(text.strip().upper())
    # isascii(): \d also matches other scripts' digits; 18 digits fit a database BIGINT.
    if not match or not match.group(1).isascii() or len(match.group(1)) > 18:
        raise ValueError(f"{text!r} is not a work order id (expected something like WO-42)")
    return int(match.group(1))
