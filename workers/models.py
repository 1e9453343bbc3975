"""Database tables (SQLModel). The schema itself is created by the Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

# Micro-dollars: 64-bit on PostgreSQL (INTEGER would cap at $2,147); SQLite integers are 64-bit.
MICRO_USD = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class WorkOrderRow(SQLModel, table=True):
    """A work order and its live counters. `id` is the number in `WO-42`."""

    __tablename__ = "work_orders"
    __table_args__ = (Index("ix_work_orders_queue", "status", "priority", "available_at"),)

    id: int | None = Field(default=None, primary_key=True)
    title: str
    requester: str = Field(index=True)
    team: str = Field(default="default", index=True)
    channel: str | None = None
    thread_ts: str | None = None
    goal: str
    context: str = ""
    deliverable: str
    acceptance_criteria: list[str] = Field(sa_column=Column(JSON, nullable=False))
    budget: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    workload_class: str
    authority_policy: str
    verification: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    escalation_contact: str | None = None
    deadline: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    status: str = Field(index=True)
    # Compare-and-set guard: every state change bumps it, so racing writers cannot both win.
    version: int = Field(default=1)
    priority: int = Field(default=1)
    rework_count: int = Field(default=0)
    # Approved by its own requester (no channel reviewer to approve it): shown as such (0015).
    self_approved: bool = Field(default=False)
    auto_revisions: int = Field(default=0, description="revisions asked for by automatic checks")
    attempts: int = Field(default=0)
    # Queue and lease.
    available_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    lease_owner: str | None = None
    lease_expires_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    # Spend so far (settled) and held back for calls in flight (reserved). Money is counted in
    # integer micro-dollars so that ceilings compare exactly.
    spent_micro_usd: int = Field(default=0, sa_type=MICRO_USD)
    spent_tokens: int = 0
    reserved_micro_usd: int = Field(default=0, sa_type=MICRO_USD)
    reserved_tokens: int = 0
    tool_calls: int = 0
    model_calls: int = 0
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )

    # Engine bookkeeping (worker runtime).
    inbox: list[dict[str, Any]] | None = Field(
        default=None,
        sa_column=Column(JSON, nullable=True),
        description="requester replies and notes waiting to be read by the next run step",
    )
    wait_reason: str | None = Field(default=None, description="why a queued order is not starting")
    wait_kind: str | None = Field(
        default=None, description="the kind of that wait: a workers.states.WaitKind value"
    )
    waiting_since: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    quota_needed_micro_usd: int | None = Field(
        default=None,
        sa_type=MICRO_USD,
        description="what the next call of an order waiting for quota must reserve",
    )
    lost_leases: int = Field(default=0, description="attempts that died without finishing")
    elapsed_ms: int = Field(default=0, description="running time used, across attempts")
    exception_kind: str | None = None
    exception_message: str | None = None


class RunAttempt(SQLModel, table=True):
    """One worker's attempt at an order, with the agent's latest checkpoint."""

    __tablename__ = "run_attempts"
    __table_args__ = (UniqueConstraint("order_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="work_orders.id", index=True)
    number: int
    worker_id: str
    started_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    ended_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    outcome: str | None = None
    step: int = 0
    checkpoint: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    checkpoint_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class IntakeSlot(SQLModel, table=True):
    """One intake request a person was admitted for: taken before the model is called, so the
    hourly limit holds however many requests arrive at once."""

    __tablename__ = "intake_slots"
    __table_args__ = (Index("ix_intake_slots_requester_created_at", "requester", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    requester: str
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class LlmCall(SQLModel, table=True):
    """One model request: what it cost and how it went."""

    __tablename__ = "llm_calls"
    # The leads' metrics read one period at a time (a covering index for spend by route).
    __table_args__ = (
        Index(
            "ix_llm_calls_created_at_cost",
            "created_at", "order_id", "team", "role", "model", "cost_micro_usd",
        ),
        Index("ix_llm_calls_requester_created_at", "requester", "created_at"),
        # An order's calls, and what those in a period cost (the spend on work not approved).
        Index("ix_llm_calls_order_created_cost", "order_id", "created_at", "cost_micro_usd"),
    )  # fmt: skip

    id: int | None = Field(default=None, primary_key=True)
    order_id: int | None = Field(default=None, foreign_key="work_orders.id")
    attempt_id: int | None = Field(default=None, foreign_key="run_attempts.id")
    role: str
    provider: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cost_micro_usd: int = 0
    reserved_micro_usd: int = 0
    latency_ms: int = 0
    outcome: str = "ok"
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )

    reserved_tokens: int = 0
    team: str | None = Field(default=None, description="team quota the reservation was held on")
    requester: str | None = Field(
        default=None, description="who an intake call served (per-user rate limit)"
    )
    quota_week: str | None = Field(default=None, description="ISO date of that quota week's Monday")
    error: str | None = None


class ToolCall(SQLModel, table=True):
    """One tool invocation, allowed or refused by the authority policy."""

    __tablename__ = "tool_calls"

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="work_orders.id", index=True)
    attempt_id: int | None = Field(default=None, foreign_key="run_attempts.id")
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    allowed: bool = True
    outcome: str = "ok"
    error: str | None = None
    result_excerpt: str | None = None
    duration_ms: int = 0
    server: str | None = None
    """The MCP server the tool belongs to (None: a built-in or plug-in tool)."""
    approver: str | None = None
    """Who allowed the call when the policy said `ask`."""
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class SlackMessage(SQLModel, table=True):
    """A message the bot posted for an order; the key makes posting idempotent."""

    __tablename__ = "slack_messages"

    id: int | None = Field(default=None, primary_key=True)
    order_id: int | None = Field(default=None, foreign_key="work_orders.id", index=True)
    key: str = Field(unique=True, description="idempotency key, e.g. 'WO-42:status'")
    purpose: str
    channel: str
    ts: str | None = None
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    # Who is posting it right now (ts still empty), and until when: a claimer that died is
    # taken over once its claim has expired.
    claimed_by: str | None = None
    claimed_until: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class OutboxMessage(SQLModel, table=True):
    """A message the engine owes a thread, written in the same transaction as the state change
    that causes it and deleted never: `sent_at` says it went out, `permanent` that it cannot."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "sent_at", "permanent", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    order_id: int | None = Field(default=None, foreign_key="work_orders.id", index=True)
    intake_id: int | None = Field(
        default=None,
        foreign_key="intake_sessions.id",
        index=True,
        description="the dialogue a reply or card belongs to (a reply may have no order yet)",
    )
    key: str = Field(unique=True, description="the message's idempotency key (workers.keys)")
    kind: str = Field(description="result, question, exception, ...")
    payload: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    priority: int = 0
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    attempts: int = 0
    next_attempt_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    claimed_by: str | None = None
    claimed_until: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    sent_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    error: str | None = None
    permanent: bool = False


class ServiceHealth(SQLModel, table=True):
    """A problem every process must see, e.g. 'slack': the bot token was revoked."""

    __tablename__ = "service_health"

    name: str = Field(primary_key=True)
    problem: str
    since: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class SlackRateLimit(SQLModel, table=True):
    """A Slack Web API method no process may call before `blocked_until` (after a 429)."""

    __tablename__ = "slack_rate_limits"

    method: str = Field(primary_key=True)
    blocked_until: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class SlackEventSeen(SQLModel, table=True):
    """Dedupe record for inbound Slack deliveries; the primary key is the uniqueness guarantee."""

    __tablename__ = "slack_events_seen"
    __table_args__ = (Index("ix_slack_events_seen_received_at", "received_at"),)

    event_id: str = Field(primary_key=True)
    kind: str = ""
    received_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    body: dict[str, Any] | None = Field(
        default=None,
        sa_column=Column(JSON, nullable=True),
        description=(
            "the delivery, kept until handled so a process dying mid-way can be made good: "
            '{"delivery": body, "mac": its MAC under the audit key} (workers.store.slack)'
        ),
    )
    handled_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    attempts: int = Field(default=1, description="times handling was started")


class AuditEvent(SQLModel, table=True):
    """One link of a hash chain. Rows are only ever inserted."""

    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("chain", "seq"),
        Index("ix_audit_events_kind_at", "kind", "at"),  # transitions by time, for metrics
    )

    id: int | None = Field(default=None, primary_key=True)
    chain: str = Field(index=True, description="'WO-42', or 'system' for events of no order")
    seq: int
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    actor: str
    kind: str
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    prev_hash: str
    hash: str = Field(unique=True)
    scheme: str = Field(default="sha256", description="'sha256' for events before keying")


class Transition(SQLModel, table=True):
    """One state change of an order, written by `Store._move` in the transaction that makes it,
    next to its audit event (same `seq` and `at`). The audit trail is the record; this narrow,
    indexed copy is what the leads' metrics read, so they need not parse the trail's JSON."""

    __tablename__ = "transitions"
    __table_args__ = (
        UniqueConstraint("order_id", "seq", name="uq_transitions_order_seq"),
        # A period's transitions, read from the index alone (it holds every column they need).
        Index(
            "ix_transitions_at",
            "at", "order_id", "from_status", "to_status", "seq", "actor", "entered_at",
            "exception_kind", "quota_wait_s",
        ),
        # An order's earlier transitions into a state (its first confirmation, for cycle time).
        Index("ix_transitions_order_to", "order_id", "to_status", "seq", "from_status", "at"),
    )  # fmt: skip

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="work_orders.id")
    seq: int = Field(description="the audit event's seq in the order's chain")
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    actor: str
    from_status: str
    to_status: str
    entered_at: datetime | None = Field(
        default=None,
        sa_column=Column(DateTime(timezone=True), nullable=True),
        description="when the order entered from_status (the previous transition's at)",
    )
    exception_kind: str | None = Field(
        default=None,
        description="for a move into exception; 'self_approved' for the requester's own approval",
    )
    quota_wait_s: float | None = Field(
        default=None,
        sa_column=Column(Float, nullable=True),
        description="time the order had waited for its team's quota, on the move that ended it",
    )


class AuditHead(SQLModel, table=True):
    """A chain's anchor outside the events table: how many events it has and the last digest,
    keyed like the events. The row for chain '*' counts every anchored event."""

    __tablename__ = "audit_heads"

    chain: str = Field(primary_key=True)
    count: int
    last_hash: str
    mac: str


class ThreadMessage(SQLModel, table=True):
    """A Slack message as the bot received it, so runs can read their thread without history APIs."""

    __tablename__ = "thread_messages"
    __table_args__ = (
        UniqueConstraint("channel", "ts"),
        Index("ix_thread_messages_thread", "channel", "thread_ts"),
    )

    id: int | None = Field(default=None, primary_key=True)
    channel: str
    thread_ts: str = Field(description="ts of the thread's root message")
    ts: str
    user: str | None = None
    bot_id: str | None = None
    text: str = ""
    # Files attached to the message, as Slack described them: [{"id", "name", "mimetype", "size"}].
    files: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    received_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class IntakeSession(SQLModel, table=True):
    """The clarifying dialogue in one thread (or console session), until it becomes an order or chat."""

    __tablename__ = "intake_sessions"
    __table_args__ = (
        UniqueConstraint("channel", "thread_ts"),
        # Covering for the metrics: a period's dialogues by kind and requester.
        Index("ix_intake_sessions_created_at_kind", "created_at", "kind", "requester"),
    )

    id: int | None = Field(default=None, primary_key=True)
    surface: str = Field(default="slack", description="'slack' or 'console'")
    channel: str
    thread_ts: str
    requester: str = Field(index=True)
    kind: str = Field(default="pending", description="an IntakeKind (workers.states)")
    state: str = Field(default="open", description="an IntakeState (workers.states)")
    rounds: int = 0
    transcript: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    draft: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    order_id: int | None = Field(default=None, foreign_key="work_orders.id")
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class TeamSpend(SQLModel, table=True):
    """A team's spend in one quota week (Monday 00:00 UTC onwards), settled and held back."""

    __tablename__ = "team_spend"
    __table_args__ = (UniqueConstraint("team", "week"),)

    id: int | None = Field(default=None, primary_key=True)
    team: str
    week: str = Field(description="ISO date of the week's Monday, e.g. '2026-11-16'")
    spent_micro_usd: int = Field(default=0, sa_type=MICRO_USD)
    reserved_micro_usd: int = Field(default=0, sa_type=MICRO_USD)
    quota_micro_usd: int | None = Field(
        default=None,
        sa_type=MICRO_USD,
        description="a lead's override of the configured weekly quota",
    )


class Deliverable(SQLModel, table=True):
    """What a run submitted; the tool-use id makes a resumed submission idempotent."""

    __tablename__ = "deliverables"
    __table_args__ = (UniqueConstraint("order_id", "tool_use_id"),)

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="work_orders.id", index=True)
    attempt_id: int | None = Field(default=None, foreign_key="run_attempts.id")
    tool_use_id: str
    summary: str = ""
    content: str
    # The automatic check's verdicts: [{"criterion", "passed", "reason"}], None if not checked.
    verdicts: list[dict[str, Any]] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class DeliverableFile(SQLModel, table=True):
    """A file a run handed in with its deliverable (CSV, Markdown, PNG, PDF), kept with it so the
    delivery road can upload it (again, after a crash) and the audit chain can name its hash."""

    __tablename__ = "deliverable_files"
    __table_args__ = (UniqueConstraint("deliverable_id", "position"),)

    id: int | None = Field(default=None, primary_key=True)
    deliverable_id: int = Field(foreign_key="deliverables.id", index=True)
    position: int = Field(description="1, 2, ... in the order the run listed them")
    name: str
    mimetype: str
    size: int
    sha256: str
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Feedback(SQLModel, table=True):
    """One person's thumbs up or down (Slack's feedback buttons) on an order's deliverable or
    on a chat answer (the intake session that answered). One row per person and subject: a
    second press replaces the first (workers.store.feedback)."""

    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("order_id", "user", name="uq_feedback_order_user"),
        UniqueConstraint("intake_session_id", "user", name="uq_feedback_session_user"),
        CheckConstraint(
            "(order_id IS NULL) <> (intake_session_id IS NULL)", name="ck_feedback_one_subject"
        ),
        Index("ix_feedback_updated_at", "updated_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    order_id: int | None = Field(default=None, foreign_key="work_orders.id")
    intake_session_id: int | None = Field(default=None, foreign_key="intake_sessions.id")
    deliverable_id: int | None = Field(
        default=None, foreign_key="deliverables.id", description="the version the person rated"
    )
    user: str
    rating: str = Field(description="'up' or 'down'")
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class DigestPost(SQLModel, table=True):
    """A weekly digest claimed (then posted) for one team, channel and ISO week: the unique key
    is what makes it exactly once, whichever process runs the schedule."""

    __tablename__ = "digest_posts"
    __table_args__ = (
        UniqueConstraint("team", "channel", "week", name="uq_digest_posts_team_channel_week"),
    )

    id: int | None = Field(default=None, primary_key=True)
    team: str
    channel: str
    week: str = Field(description="ISO week, e.g. '2026-W47'")
    state: str = Field(
        default="claimed", description="'claimed', 'posted', or 'skipped' (an empty week)"
    )
    claimed_by: str
    claimed_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    posted_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    ts: str | None = None


class ToolApproval(SQLModel, table=True):
    """A run's request to make one tool call a person must allow first, and the answer.

    Two kinds: 'tool' (the authority policy says `ask` for this tool) and 'domain' (web_fetch
    wants a page outside the order's domains; `host` and `url` say which). One row per (order,
    tool call): the call that asked is re-run when the run resumes and finds its answer here.
    `decision` is None while pending, then 'once', 'order' or 'deny'; a 'once' grant is spent
    (`used_at`) by the one call it allows. An 'order' row covers later calls of the same tool
    (a domain: the same host) on the same order only. `arguments` is a capped copy of the
    call's arguments as canonical JSON; `arguments_sha256` the digest of all of it."""

    __tablename__ = "tool_approvals"
    __table_args__ = (UniqueConstraint("order_id", "tool_use_id"),)

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="work_orders.id", index=True)
    tool_use_id: str
    kind: str = "tool"
    tool: str = ""
    """The tool's own name: a built-in's, or the MCP tool's name on its server."""
    server: str | None = None
    arguments: str = ""
    arguments_sha256: str = ""
    arguments_chars: int = 0
    host: str = ""
    url: str = ""
    reason: str = ""
    decision: str | None = None
    decided_by: str | None = None
    decided_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    used_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


DomainApproval = ToolApproval
"""The domain prompt is one kind of tool-call approval (kind 'domain')."""


# Closed days of the leads' metrics, summarised once (store.reporting.metric_days). `day` is a UTC date
# as 'YYYY-MM-DD'; `team` is '' for spend no team paid for (an intake call from before intake
# was charged), which counts only for the whole workspace.


class MetricDay(SQLModel, table=True):
    """A UTC day whose figures are summarised in the metric_day_* tables (all of them, in the
    same transaction as this row)."""

    __tablename__ = "metric_days"

    day: str = Field(primary_key=True)
    summarised_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )


class MetricDaySpend(SQLModel, table=True):
    """A day's model spend for one team and route."""

    __tablename__ = "metric_day_spend"

    day: str = Field(primary_key=True)
    team: str = Field(primary_key=True)
    role: str = Field(primary_key=True)
    workload_class: str = Field(primary_key=True)
    model: str = Field(primary_key=True)
    calls: int
    micro_usd: int = Field(sa_column=Column(MICRO_USD, nullable=False))


class MetricDayMoves(SQLModel, table=True):
    """How many of a team's orders made one counted state change on a day."""

    __tablename__ = "metric_day_moves"

    day: str = Field(primary_key=True)
    team: str = Field(primary_key=True)
    from_status: str = Field(primary_key=True)
    to_status: str = Field(primary_key=True)
    exception_kind: str = Field(
        primary_key=True, description="'' unless into exception, or 'self_approved' into approved"
    )
    moves: int
    first_pass: int = Field(description="approvals of orders never sent back for changes")


class MetricDayPerson(SQLModel, table=True):
    """One person's part in a team's day: orders they confirmed and saw approved as requester,
    review decisions they made and how many of those approved."""

    __tablename__ = "metric_day_people"

    day: str = Field(primary_key=True)
    team: str = Field(primary_key=True)
    user_id: str = Field(primary_key=True)
    confirmed: int
    finished: int
    decisions: int
    approvals: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class MetricDayDurations(SQLModel, table=True):
    """A team's durations of one kind on a day (cycle, review, queue, quota), in seconds: kept
    whole, because percentiles over several days cannot be made from per-day figures."""

    __tablename__ = "metric_day_durations"

    day: str = Field(primary_key=True)
    team: str = Field(primary_key=True)
    kind: str = Field(primary_key=True)
    seconds: list[float] = Field(sa_column=Column(JSON, nullable=False))


class Installation(SQLModel, table=True):
    """One row: when this database was first migrated, i.e. when Delegate was installed
    (workers.installation reads it)."""

    __tablename__ = "installation"

    id: int = Field(default=1, primary_key=True)
    installed_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
