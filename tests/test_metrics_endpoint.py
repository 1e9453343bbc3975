"""GET /metrics after a full order: the series an operator alerts on are present and counting."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.ids import APPROVE_ACTION
from tests.fakes.anthropic import Reply
from tests.support.pipeline import Pipeline, PipelineFactory, verdicts
from tests.support.waiting import eventually
from workers.workorder import Status

pytestmark = pytest.mark.front_door  # SQLite only: tests/support/databases.py

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def pipe(pipeline: PipelineFactory) -> AsyncIterator[Pipeline]:
    async with pipeline() as p:
        yield p


async def scrape(pipe: Pipeline) -> Samples:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{pipe.bot.url}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def test_metrics_count_a_full_order(pipe: Pipeline) -> None:
    before = await scrape(pipe)
    pipe.openai.script(verdicts(True, True, True))
    pipe.slack.fail_next("chat.update", 429, retry_after=0)  # a status update sits one out
    order_id = await pipe.order_started(
        Reply.tool("submit_deliverable", {"content": "| Acme | $10 |", "summary": "done"})
    )
    await pipe.status_of(order_id, Status.AWAITING_REVIEW)
    await pipe.post(APPROVE_ACTION)
    await pipe.click(APPROVE_ACTION, order_id, "U7")
    await pipe.status_of(order_id, Status.APPROVED)

    async def delivered() -> bool:
        # The deliverer marks the review prompt sent a moment after Slack has it.
        return value(await scrape(pipe), "delegate_outbox_undelivered") == 0

    await eventually(delivered, timeout_s=30)  # everything the review needed went out
    after = await scrape(pipe)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # From the shared database: exact for this test's own database.
    assert value(after, "delegate_orders", state="approved") == 1
    assert value(after, "delegate_queue_depth") == 0
    # Counted where they happened.
    assert grew("delegate_model_calls_total", role="intake", outcome="ok") >= 1
    assert grew("delegate_model_calls_total", role="execute", provider="anthropic", outcome="ok") >= 1
    assert grew("delegate_model_calls_total", role="verify", provider="openai", outcome="ok") >= 1
    assert grew("delegate_model_tokens_total", role="execute", kind="output") > 0
    assert grew("delegate_model_cost_usd_total", role="execute") > 0
    assert grew("delegate_model_call_duration_seconds_count", role="execute") >= 1
    assert grew("delegate_slack_api_calls_total", method="chat.postMessage", outcome="ok") >= 3
    assert grew("delegate_slack_rate_limited_total", method="chat.update") == 1
    assert grew("delegate_run_duration_seconds_count", outcome="done") >= 1
    assert value(after, "delegate_outbox_failed") == 0
    for name in (
        "delegate_runs_in_flight",
        "delegate_leases_lost_total",
        "delegate_queue_oldest_age_seconds",
        "delegate_outbox_oldest_undelivered_age_seconds",
    ):
        assert any(n == name for n, _ in after), name
