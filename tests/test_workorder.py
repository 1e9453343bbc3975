"""WorkOrder validation and ids."""

from __future__ import annotations

from datetime import datetime

import pytest
from pydantic import ValidationError

from tests.support.factories import make_order
from workers.workorder import Budget, parse_order_id


def test_order_needs_at_least_one_acceptance_criterion() -> None:
    with pytest.raises(ValidationError, match="acceptance_criteria"):
        make_order(acceptance_criteria=[])


def test_blank_criterion_is_refused() -> None:
    with pytest.raises(ValidationError, match="blank"):
        make_order(acceptance_criteria=["Has a table", "   "])


def test_deadline_must_carry_a_time_zone() -> None:
    with pytest.raises(ValidationError, match="time zone"):
        make_order(deadline=datetime(2026, 12, 1, 17, 0))


def test_budget_refuses_non_positive_ceilings() -> None:
    with pytest.raises(ValidationError, match="max_usd"):
        Budget(max_usd=0, max_tokens=10, max_wall_clock_s=10, max_tool_calls=1)


def test_budget_description_reads_like_the_card() -> None:
    budget = Budget(max_usd=2, max_tokens=1000, max_wall_clock_s=900, max_tool_calls=40)
    assert budget.describe() == "$2.00 · 15 min · 40 tool calls"


@pytest.mark.parametrize(("text", "number"), [("WO-42", 42), (" wo-7 ", 7)])
def test_parse_order_id(text: str, number: int) -> None:
    assert parse_order_id(text) == number


@pytest.mark.parametrize("text", ["42", "WO-", "WO-x", "order 42"])
def test_parse_order_id_rejects_garbage_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match="WO-42"):
        parse_order_id(text)
