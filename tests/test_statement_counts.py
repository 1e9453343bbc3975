"""Round trips to PostgreSQL per run step and per order (issue 23), counted as the
benchmarks count them (tests/support/statements.py): every statement SQLAlchemy sends, BEGIN
and COMMIT included. The ceilings are today's counts, not the goal (a step in 6 statements, a
two-call order in 40): they make a change that adds round trips fail here, and they are lowered
as the engine is made to need fewer."""

from __future__ import annotations

import pytest

from tests.fakes.anthropic import Reply
from tests.support.engine import Harness
from tests.support.statements import Statements
from workers import queue

# A step is 4 transactions (and the tool's own reads): the reservation; the settlement with
# its audit append; the reply's checkpoint with the tool call's count and status row; the tool
# call's record (with its audit append) with the results' checkpoint.
# 50 statements when this test was added; 40 once a run's fenced write locked its order and
# attempt in one statement, 37 once a tool call's count and its status row shared a
# transaction, 33 once a checkpoint and its elapsed-time write were one statement, 31 once a
# step read its inbox from the checkpoint before it instead of reading the order again, 25
# once the reply's checkpoint rode with the tool call's count and a tool call's record with
# the step's next write, 24 once the reservation was fenced in the statement that reads the
# order and the team's week, 23 once an audit append moved the head this process last wrote
# without reading it first, 22 once the settlement's append did too, its team charge made only
# if the guess holds, 21 once the checkpoint's statement counted the step's tool call
# (PostgreSQL 15).
STEP_CEILING = 21
ORDER_CEILING = 113  # queue 13 + claim 17 + run 83; the deliverer's side is not counted

pytestmark = pytest.mark.parametrize("database", ["postgres"], indirect=True)


async def _order_with_steps(h: Harness, statements: Statements, reads: int) -> dict[str, int]:
    """Queue, claim and run one order whose run reads the thread `reads` times and submits;
    the statements each phase took."""
    await h.store.slack.record_thread_message(
        channel="C1", thread_ts="1700000000.000100", ts="1700000000.000100", text="Do X", user="U1"
    )
    h.anthropic.script(
        *[Reply.tool("read_thread", {}) for _ in range(reads)],
        Reply.tool("submit_deliverable", {"content": "# Table", "summary": "Done."}),
    )
    counts: dict[str, int] = {}
    start = statements.count
    order = await h.order(start=False)
    before = statements.count
    counts["create"] = before - start
    await queue.enqueue(h.store, h.settings, order.id or "", actor="U1")
    counts["queue"] = statements.count - before
    before = statements.count
    claim = await queue.claim(h.store, h.settings, h.worker_id)
    counts["claim"] = statements.count - before
    assert claim.order is not None and claim.attempt is not None
    before = statements.count
    outcome = await h.agent().run(claim.order, claim.attempt, elapsed_ms=claim.elapsed_ms)
    counts["run"] = statements.count - before
    assert outcome.kind == "done"
    counts["total"] = counts["queue"] + counts["claim"] + counts["run"]
    return counts


async def test_statements_per_run_step_and_per_order(harness: Harness) -> None:
    statements = Statements(harness.store.engine)
    two_calls = await _order_with_steps(harness, statements, reads=1)
    three_calls = await _order_with_steps(harness, statements, reads=2)
    per_step = three_calls["run"] - two_calls["run"]
    print(f"two-call order: {two_calls}; one more step (a model call and its tool): {per_step}")
    assert per_step <= STEP_CEILING, f"a run step took {per_step} statements"
    assert two_calls["total"] <= ORDER_CEILING, f"a two-call order took {two_calls}"
