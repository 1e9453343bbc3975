"""Builders for domain objects used across tests."""

from __future__ import annotations

from typing import Any

from workers.workorder import Budget, Verification, WorkOrder


def make_order(**overrides: Any) -> WorkOrder:
    fields: dict[str, Any] = {
        "title": "Competitor pricing summary",
        "requester": "U1",
        "channel": "C1",
        "thread_ts": "1700000000.000100",
        "goal": "Summarise the public pricing of our three main competitors.",
        "deliverable": "A one-page markdown table with a short commentary.",
        "acceptance_criteria": ["Covers all three competitors", "Each price cites its source URL"],
        "budget": Budget(max_usd=2.0, max_tokens=100_000, max_wall_clock_s=900, max_tool_calls=40),
        "escalation_contact": "U9",
        # Engine tests end at the reviewer; the verification tests turn the checks on.
        "verification": Verification(automatic_checks=False),
    }
    fields.update(overrides)
    return WorkOrder(**fields)
