"""The budget guarantee, tested over hundreds of randomized runs, many of them concurrent:
recorded spend never exceeds an order's ceilings or the team's weekly quota."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

from tests.fakes import estimate_tokens
from tests.fakes.anthropic import Reply
from tests.fakes.openai import Reply as OpenAIReply
from tests.support.databases import Database
from tests.support.engine import Harness
from tests.support.records import llm_calls, team_spend
from workers import queue
from workers.budget import quota_week, usd_to_micro
from workers.models import utcnow
from workers.workorder import Budget

RUNS = {"sqlite": 150, "postgres": 100}  # 250 randomized runs in all, in batches of 10
CONCURRENCY = 10
TEAM_QUOTA_USD = 2.5
SEED = 20261122


def _prompt_tokens(body: dict[str, Any]) -> int:
    """What the fakes would count; real prompts never exceed our byte bound either."""
    prompt = {k: body.get(k) for k in ("system", "messages", "tools") if body.get(k)}
    return estimate_tokens(prompt)


class Chaos:
    """A model that does random things with random (but possible) usage."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def usage(self, body: dict[str, Any], max_out: int) -> dict[str, int]:
        # A tokenizer counts the same prompt the same way; how it splits across cache kinds varies.
        prompt = _prompt_tokens(body)
        write = self.rng.randint(0, prompt)
        read = self.rng.randint(0, prompt - write)
        return {
            "input_tokens": prompt - write - read,
            "cache_creation_input_tokens": write,
            "cache_read_input_tokens": read,
            "output_tokens": self.rng.choice([1, self.rng.randint(1, max_out), max_out]),
        }

    def anthropic(self, body: dict[str, Any]) -> Reply:
        roll = self.rng.random()
        usage = self.usage(body, body["max_tokens"])
        if roll < 0.05:
            return Reply.error(529, headers={"retry-after-ms": "1"})
        if roll < 0.08:
            return Reply.error(529, headers={"retry-after-ms": "1"}, delay=0.01)
        if roll < 0.55:
            return Reply.tool("read_thread", {}, usage=usage)
        if roll < 0.60:
            # Not offered under the default policy: the model calls it anyway, and is refused.
            return Reply.tool(
                "web_fetch", {"url": "https://example.com"}, usage=usage, undeclared_ok=True
            )
        if roll < 0.70:
            return Reply(text="Working on it.", usage=usage)
        if roll < 0.72:
            return Reply(text="No.", stop_reason="refusal", usage=usage)
        if roll < 0.80:
            return Reply(
                text="Long answer",
                stop_reason="max_tokens",
                usage={**usage, "output_tokens": body["max_tokens"]},
            )
        return Reply.tool("submit_deliverable", {"content": "result", "summary": "done"}, usage=usage)

    def openai(self, body: dict[str, Any]) -> OpenAIReply:
        prompt = _prompt_tokens(body)
        usage = {
            "prompt_tokens": prompt,
            "cached_tokens": self.rng.randint(0, prompt),
            "completion_tokens": self.rng.randint(1, body["max_completion_tokens"]),
        }
        if self.rng.random() < 0.5:
            return OpenAIReply.tool("read_thread", {}, usage=usage)
        return OpenAIReply.tool("submit_deliverable", {"content": "r", "summary": "s"}, usage=usage)


def random_budget(rng: random.Random) -> Budget:
    return Budget(
        max_usd=rng.choice([0.005, 0.02, 0.05, 0.1, 0.3]),
        max_tokens=rng.choice([3_000, 15_000, 40_000, 200_000]),
        max_wall_clock_s=60,
        max_tool_calls=rng.randint(0, 6),
        max_model_calls=rng.randint(1, 8),
    )


async def test_spend_never_exceeds_the_ceilings_or_the_team_quota(
    harness: Harness, database: Database
) -> None:
    h = harness
    total = RUNS[database.backend]
    rng = random.Random(SEED)
    chaos = Chaos(rng)
    week = quota_week(utcnow())
    quota = usd_to_micro(TEAM_QUOTA_USD)
    await h.store.ledger.set_team_quota("default", week, quota_micro_usd=quota, actor="lead")
    teams = {"default": {"weekly_usd": 100.0, "max_concurrent_runs_per_user": 1000, "members": []}}
    h.settings = h.settings.model_copy(
        update={"teams": h.settings.model_validate({**h.settings.model_dump(), "teams": teams}).teams}
    )
    h.anthropic.script(*[chaos.anthropic] * (total * 12))
    h.openai.script(*[chaos.openai] * (total * 12))
    order_ids = []
    outcomes: dict[str, int] = {}
    for batch in range(total // CONCURRENCY):
        for _ in range(CONCURRENCY):
            order = await h.order(budget=random_budget(rng), authority_policy=rng.choice(["default", "research"]))
            order_ids.append(order.id or "")
        claims = [await queue.claim(h.store, h.settings, f"w{batch}-{n}") for n in range(CONCURRENCY)]
        runs = [
            h.agent(f"w{batch}-{n}").run(c.order, c.attempt, elapsed_ms=c.elapsed_ms)
            for n, c in enumerate(claims)
            if c.order is not None and c.attempt is not None
        ]
        for outcome in await asyncio.gather(*runs):
            outcomes[outcome.kind] = outcomes.get(outcome.kind, 0) + 1

    # Most orders ran; the rest are waiting because the shared team quota ran out.
    assert sum(outcomes.values()) >= total // 2, outcomes
    assert outcomes.get("done", 0) > 10 and outcomes.get("exception", 0) > 10, outcomes
    for order_id in order_ids:
        row = await h.store.orders.get_row(order_id)
        if row.status == "queued":
            assert "quota" in (row.wait_reason or ""), row.wait_reason
    team_total = 0
    for order_id in order_ids:
        row = await h.store.orders.get_row(order_id)
        budget = Budget.model_validate(row.budget)
        context = json.dumps({"order": order_id, "budget": budget.model_dump(), "status": row.status})
        assert row.spent_micro_usd <= usd_to_micro(budget.max_usd), context
        assert row.spent_tokens <= budget.max_tokens, context
        assert row.tool_calls <= budget.max_tool_calls, context
        assert row.model_calls <= budget.max_model_calls, context
        assert row.reserved_micro_usd == 0 and row.reserved_tokens == 0, context
        calls = await llm_calls(h.store, order_id)
        assert row.spent_micro_usd == sum(c.cost_micro_usd for c in calls), context
        assert all(c.outcome != "pending" for c in calls), context
        team_total += row.spent_micro_usd
    spend = await team_spend(h.store, "default", week)
    assert spend is not None
    assert spend.spent_micro_usd == team_total <= quota
    assert spend.reserved_micro_usd == 0
