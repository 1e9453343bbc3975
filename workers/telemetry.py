"""Prometheus metrics: what an operator watches and alerts on (docs/OPERATIONS.md lists them).

Counters and histograms are updated where things happen (model calls in the router, Slack calls
in the client, runs in the worker); figures that live in the database (orders by state, queue
depth and age) are read at scrape time (`Reporting.gauges`, then `refresh`), so every process reports the
same shared truth. One registry per process, exposed at `GET /metrics`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from workers.store.reporting.gauges import Gauges
from workers.workorder import Status

REGISTRY = CollectorRegistry()
CONTENT_TYPE = CONTENT_TYPE_LATEST

ORDERS = Gauge(
    "delegate_orders", "Work orders by state (all processes).", ["state"], registry=REGISTRY
)
QUEUE_DEPTH = Gauge("delegate_queue_depth", "Orders queued for a worker.", registry=REGISTRY)
QUEUE_OLDEST_AGE = Gauge(
    "delegate_queue_oldest_age_seconds",
    "How long the oldest queued order has been waiting.",
    registry=REGISTRY,
)
OUTBOX_DEPTH = Gauge(
    "delegate_outbox_undelivered",
    "Thread messages (results, questions, exceptions) written but not delivered yet.",
    registry=REGISTRY,
)
OUTBOX_OLDEST_AGE = Gauge(
    "delegate_outbox_oldest_undelivered_age_seconds",
    "How long the oldest undelivered thread message has been waiting.",
    registry=REGISTRY,
)
OUTBOX_FAILED = Gauge(
    "delegate_outbox_failed",
    "Thread messages Slack refused for good (bot not in channel, archived channel...).",
    registry=REGISTRY,
)
RUNS_IN_FLIGHT = Gauge(
    "delegate_runs_in_flight", "Runs this process is executing now.", registry=REGISTRY
)
RUN_DURATION = Histogram(
    "delegate_run_duration_seconds",
    "One attempt of a run, claim to outcome.",
    ["outcome"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
    registry=REGISTRY,
)
LEASES_LOST = Counter(
    "delegate_leases_lost_total", "Runs stopped because their lease was lost.", registry=REGISTRY
)
RUN_STOPS = Counter(
    "delegate_run_stops_total",
    "Runs that ended in an exception, by kind (budget, authority, provider, stalled, ...).",
    ["kind"],
    registry=REGISTRY,
)
MODEL_CALLS = Counter(
    "delegate_model_calls_total",
    "Model calls by route and outcome.",
    ["provider", "model", "role", "outcome"],
    registry=REGISTRY,
)
MODEL_LATENCY = Histogram(
    "delegate_model_call_duration_seconds",
    "Model call latency.",
    ["provider", "model", "role"],
    buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320),
    registry=REGISTRY,
)
MODEL_TOKENS = Counter(
    "delegate_model_tokens_total",
    "Tokens by route and kind (input, output, cache_write, cache_read).",
    ["provider", "model", "role", "kind"],
    registry=REGISTRY,
)
MODEL_COST = Counter(
    "delegate_model_cost_usd_total",
    "USD charged for model calls, by route.",
    ["provider", "model", "role"],
    registry=REGISTRY,
)
SLACK_CALLS = Counter(
    "delegate_slack_api_calls_total",
    "Slack Web API calls by method and outcome (ok, error).",
    ["method", "outcome"],
    registry=REGISTRY,
)
SLACK_RATE_LIMITED = Counter(
    "delegate_slack_rate_limited_total",
    "Slack answers of 429 (each one retried after Retry-After), by method.",
    ["method"],
    registry=REGISTRY,
)
SLACK_ERRORS = Counter(
    "delegate_slack_api_errors_total",
    "Slack Web API errors by method and error code.",
    ["method", "error"],
    registry=REGISTRY,
)
MCP_CALLS = Counter(
    "delegate_mcp_tool_calls_total",
    "Calls to MCP servers' tools (every call that left for the server).",
    ["server", "tool"],
    registry=REGISTRY,
)
MCP_ERRORS = Counter(
    "delegate_mcp_tool_errors_total",
    "MCP tool calls that failed, by kind (timeout, unavailable, protocol, tool_error).",
    ["server", "tool", "kind"],
    registry=REGISTRY,
)
MCP_LATENCY = Histogram(
    "delegate_mcp_tool_call_duration_seconds",
    "MCP tool call latency, failed calls included.",
    ["server", "tool"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)


def record_mcp_call(*, server: str, tool: str, error: str | None, latency_s: float) -> None:
    MCP_CALLS.labels(server, tool).inc()
    MCP_LATENCY.labels(server, tool).observe(latency_s)
    if error is not None:
        MCP_ERRORS.labels(server, tool, error).inc()


def record_model_call(
    *,
    provider: str,
    model: str,
    role: str,
    outcome: str,
    latency_s: float,
    tokens: dict[str, int],
    cost_usd: float,
) -> None:
    MODEL_CALLS.labels(provider, model, role, outcome).inc()
    MODEL_LATENCY.labels(provider, model, role).observe(latency_s)
    for kind, count in tokens.items():
        if count:
            MODEL_TOKENS.labels(provider, model, role, kind).inc(count)
    if cost_usd:
        MODEL_COST.labels(provider, model, role).inc(cost_usd)


def refresh(gauges: Gauges, *, now: datetime | None = None) -> None:
    """Set the shared figures (orders by state, the queue, the outbox) read just before a
    scrape (workers.store.reporting.gauges)."""
    now = now or datetime.now(UTC)
    OUTBOX_DEPTH.set(gauges.outbox_pending - gauges.outbox_failed)
    OUTBOX_FAILED.set(gauges.outbox_failed)
    OUTBOX_OLDEST_AGE.set(_age(now, gauges.outbox_oldest_pending_at))
    for state in Status:
        ORDERS.labels(state.value).set(gauges.orders_by_state.get(state.value, 0))
    QUEUE_DEPTH.set(gauges.orders_by_state.get(Status.QUEUED.value, 0))
    QUEUE_OLDEST_AGE.set(_age(now, gauges.oldest_queued_at))


def _age(now: datetime, since: datetime | None) -> float:
    if since is None:
        return 0.0
    since = since if since.tzinfo else since.replace(tzinfo=UTC)
    return max(0.0, (now - since).total_seconds())


def exposition() -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(REGISTRY)
