"""`delegate show WO-42` prints what a terminal user needs to follow an order: state, spend, the
deliverable and the verifier's verdicts."""

from __future__ import annotations

import pytest

from tests.fakes.anthropic import Reply
from tests.support.cli import delegate
from tests.support.engine import Harness

pytestmark = pytest.mark.front_door  # SQLite only: tests/support/databases.py


def verdicts(*passed: bool) -> Reply:
    """The verifier's answer (the harness routes every role to Anthropic first)."""
    return Reply.tool(
        "record_verdicts",
        {
            "verdicts": [
                {"index": i, "passed": p, "reason": "ok" if p else "no source for Globex"}
                for i, p in enumerate(passed, 1)
            ]
        },
    )



async def _show(harness: Harness, *args: str) -> tuple[int, str, str]:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": harness.settings.database_url}
    return await delegate("show", *args, env=env)


async def test_show_prints_the_deliverable_and_the_verdicts(harness: Harness) -> None:
    h = harness
    order = await h.order(verification={"automatic_checks": True, "reviewers": ["U2"]})
    h.anthropic.script(
        Reply.tool("submit_deliverable", {"content": "| Acme | $10 |", "summary": "Table ready."}),
        verdicts(True, False),
        Reply.tool("submit_deliverable", {"content": "| Acme | $10 (acme.com) |", "summary": "Fixed."}),
        verdicts(True, True),
    )
    await h.run_next()  # submits, fails a check, goes back for its automatic revision
    await h.run_next()  # resubmits and passes
    code, out, err = await _show(h, order.id or "")
    assert code == 0, err
    assert f"{order.id}: " in out and "State:        awaiting review" in out
    assert "Deliverable (version 2): Fixed." in out and "| Acme | $10 (acme.com) |" in out
    assert "Verification: 2 of 2 criteria met" in out and "✓ " in out
    number = (order.id or "").removeprefix("WO-")
    for spelled in (number, f"wo-{number}"):  # `delegate show 1` and `show wo-1` mean WO-1
        code, again, err = await _show(h, spelled)
        assert code == 0 and again == out, err


async def test_show_of_an_unknown_order_or_bad_id_is_one_line(harness: Harness) -> None:
    code, _, err = await _show(harness, "WO-999")
    assert code == 1 and err.strip() == "delegate: there is no work order WO-999"
    code, _, err = await _show(harness, "999")
    assert code == 1 and err.strip() == "delegate: there is no work order WO-999"
    code, _, err = await _show(harness, "banana")
    assert code == 2 and "WO-42" in err and "Traceback" not in err
